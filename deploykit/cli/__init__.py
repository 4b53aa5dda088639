"""Command-line interface: one module per command, each parsing its flags, calling one workflow and printing
what it returns. Only this package prints (and the serve supervisor in it); library code raises typed errors
and warns through :mod:`warnings`, which :mod:`deploykit.cli.app` turns into one-line messages and exit codes.

Owns: argument parsing, what a command prints, typed errors -> one-line messages and exit codes.
May import: everything."""

from deploykit.cli import bench, build, doctor, export, info, predict, serving, validate  # noqa: F401  (commands)
from deploykit.cli.app import WEIGHTS_FORMATS, cli, main

__all__ = ["WEIGHTS_FORMATS", "cli", "main"]
