"""The ``deploykit`` group, the error handling every command shares and the process exit.

Library code raises typed errors and warns through :mod:`warnings`; only the command line turns them into
one-line messages (``error: ...``, ``warning: ...``) and exit codes: 0 ok, 1 parity failed, 2 bad usage or
input, 3 engine stage unavailable, 130 interrupted by SIGINT, 143 terminated by SIGTERM."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import click

from deploykit import __version__
from deploykit.core.errors import DeployKitError, DeployKitWarning, one_line
from deploykit.core.interrupts import Terminated, handle_signals
from deploykit.core.parts import missing_part

#: the layouts of ``deploykit.models.pretrained.FORMATS``, spelled out so that ``--help`` imports no torch
WEIGHTS_FORMATS = (
    "hf-cvt",
    "official-cvt",
    "timm-convit",
    "official-ceit",
    "official-deepvit",
    "official-hvt",
    "deploykit",
)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DeployKitError (and OSError) into one clear line on stderr and the error's exit code, and the
    ImportError of an optional part that is not installed (PyTorch, ONNX Runtime, ...) into the line naming
    its extra (``error: export needs PyTorch: pip install 'deploykit[export]'``, exit 2). The line
    is the last defence of the one-line rule: a line break or terminal escape in a message (a file name,
    a value read from a file) is printed escaped (``\\n``), so no error can span two lines or fake one.
    deploykit's warnings are shown as one ``warning:`` line each."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context()
        verbose = context.find_root().params.get("verbose", False)
        try:
            with _warnings_as_lines():
                return fn(*args, **kwargs)
        except ImportError as exc:  # an optional part missing: one line naming its extra, never a traceback
            missing = missing_part(exc, context.info_name)
            if missing is None:
                raise
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {one_line(missing)}", err=True)
            sys.exit(missing.exit_code)
        except DeployKitError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(one_line(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was published", err=True)
            sys.exit(130)
        except Terminated as exc:
            click.echo("terminated: nothing was published", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """deploykit's warnings (:class:`DeployKitWarning`) as ``warning: <message>`` on stderr, each time."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, DeployKitWarning):
            click.echo(f"warning: {one_line(message)}", err=True)
        else:
            previous(message, category, filename, lineno, file=file, line=line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DeployKitWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
def cli(verbose: bool) -> None:
    """deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity."""


def main() -> None:
    """The ``deploykit`` command: a usage error (unknown option, bad value, missing argument) is one line
    and exit 2, like every other bad input."""
    try:
        code = _run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            click.echo(str(exc.code), err=True)
    _leave(code)


def _run() -> int:
    with handle_signals():
        try:
            code = cli.main(prog_name="deploykit", standalone_mode=False)
        except click.ClickException as exc:
            hint = (
                f" (deploykit {exc.ctx.info_name} --help)"
                if getattr(exc, "ctx", None) and exc.ctx.parent
                else ""
            )
            click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            return exc.exit_code
        except click.Abort:
            click.echo("interrupted: nothing was published", err=True)
            return 130
    return code if isinstance(code, int) else 0


def _leave(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown. The command has finished (files published or
    rejected, child processes reaped, temporary folders removed); what is left is freeing the objects that
    dynamo tracing leaves behind (FX graphs, symbolic-shape caches; docs/measured.md). ``atexit`` handlers
    still run and both streams are flushed first."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
