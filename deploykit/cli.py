"""Command-line interface. Library code raises typed errors; only this module turns them into one-line
messages and exit codes (0 ok, 1 parity failed, 2 bad usage or input, 3 engine stage unavailable)."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from deploykit import __version__
from deploykit.errors import DeployKitError


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DeployKitError (and OSError) into one clear line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return fn(*args, **kwargs)
        except DeployKitError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
def cli(verbose: bool) -> None:
    """deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity."""


@cli.command("list")
@click.argument("pattern", required=False)
@_handle_errors
def list_cmd(pattern: str | None) -> None:
    """List registered presets (optionally matching an fnmatch PATTERN such as 'cvt*')."""
    from rich.console import Console
    from rich.table import Table

    from deploykit.models import get_preset, list_aliases, list_models, preset_parameter_count

    table = Table(title="deploykit presets")
    for col in ("preset", "family", "params (M)", "reference (M)", "input size", "reference"):
        table.add_column(col, justify="right" if "(M)" in col else "left")
    for name in list_models(pattern):
        p = get_preset(name)
        params = preset_parameter_count(name)
        ref = (
            "" if p.reference_params_m is None else f"{p.reference_params_m:.{p.reference_params_decimals}f}"
        )
        size = p.kwargs.get("image_size", 224)
        table.add_row(name, p.family, f"{params / 1e6:.3f}", ref, f"{size}x{size}", p.reference)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    aliases = ", ".join(f"{a} -> {t}" for a, t in list_aliases().items())
    console.print(f"family aliases: {aliases}")


def main() -> None:
    cli(prog_name="deploykit")


if __name__ == "__main__":
    main()
