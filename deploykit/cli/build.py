"""``deploykit build``."""

from __future__ import annotations

from typing import Any

import click

from deploykit.cli.app import cli, handle_errors


@cli.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--batch", help="Optimization profile MIN,OPT,MAX (default: the config's [batch]).")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Export config for [batch]/[engine]."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="Timing cache to load and save (default <dir>/timing.cache).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default: beside the ONNX file).",
)
@handle_errors
def build_cmd(onnx_file: str, **options: Any) -> None:
    """Build a TensorRT engine (10.3+ or 11.x) from ONNX_FILE, strongly typed: FP16 comes from an FP16 graph.

    Exit 0 built; 1 an FP16 graph came out FP32; 2 bad input or build failure; 3 TensorRT or a GPU is
    missing (then build_engine.sh with the equivalent trtexec command is written instead).
    """
    from deploykit.workflows.build import build_onnx

    result = build_onnx(onnx_file, **options)
    click.echo(
        f"built {result.engine_path} ({result.sidecar.get('precision')}, FP16 layers "
        f"{result.fp16_share:.0%}, {result.build_seconds:.1f} s) + {result.sidecar_path.name}"
    )
