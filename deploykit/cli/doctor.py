"""``deploykit doctor``."""

from __future__ import annotations

import sys

import click

from deploykit.cli.app import cli, handle_errors
from deploykit.core.errors import one_line


@cli.command("doctor")
@click.argument("artifact_dir", required=False, type=click.Path(file_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@handle_errors
def doctor_cmd(artifact_dir: str | None, json_out: str | None) -> None:
    """What this machine can run: Python, deploykit, export (torch), ONNX Runtime and the providers that
    really run, TensorRT, CUDA, the GPU, a Jetson's model/L4T/power mode/clocks, a Triton server; with
    ARTIFACT_DIR, how each of its ONNX files and engines runs here and the command to run next.

    Exit 0 everything ARTIFACT_DIR holds runs here (without it: ONNX Runtime or TensorRT runs here); 2 bad
    input; 3 a part is missing.
    """
    from deploykit.serving.install import describe_server
    from deploykit.workflows.doctor import Probes, doctor

    report = doctor(artifact_dir, json_out=json_out, probes=Probes(triton=describe_server))
    width = max(len(c.name) for c in report.components)
    for c in report.components:
        click.echo(f"{c.name:<{width}}  {c.status!s:<14}  {one_line(c.summary)}")
    if report.folder is not None:
        click.echo(f"\n{report.folder}:")
        for f in report.files:
            line = f"  {f.file}: " + (f"runs ({f.how})" if f.runs else "does not run here")
            detail = f.reason if f.reason else ""
            click.echo(one_line(f"{line}{f' - {detail}' if detail else ''}"))
        for command in report.next:
            click.echo(f"next: {one_line(command)}")
    if json_out:
        click.echo(f"wrote {json_out}")
    sys.exit(report.exit_code)
