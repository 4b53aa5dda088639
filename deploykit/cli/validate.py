"""``deploykit validate``: the CI gate."""

from __future__ import annotations

import sys
from typing import Any

import click

from deploykit.cli.app import WEIGHTS_FORMATS, cli, handle_errors


@cli.command("validate")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model",
    help="Preset the artifact was exported from (default: the one it records; a different one is an error).",
)
@click.option(
    "--weights",
    type=click.Path(),
    help="Weights the artifact was exported with (default: the file its manifest.json records; other "
    "weights than the recorded ones are an error).",
)
@click.option(
    "--weights-format",
    type=click.Choice(WEIGHTS_FORMATS),
    help="Checkpoint layout of --weights (default: detected from its keys).",
)
@click.option("--inputs", "inputs_dir", type=click.Path(), help="Folder of your own validation images.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Export config with the tolerances."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the parity report as JSON.")
@click.option("--junit", "junit_out", type=click.Path(dir_okay=False), help="Write a JUnit XML report.")
@click.option(
    "--locate", is_flag=True, help="On failure, name the first PyTorch module whose output diverges."
)
@click.option(
    "--baseline",
    "baseline_path",
    type=click.Path(dir_okay=False),
    help="Baseline JSON: exit 1 when a metric regresses past [validation] baseline_factor of it.",
)
@click.option("--update-baseline", is_flag=True, help="Write the metrics to --baseline instead of comparing.")
@click.option(
    "--reference",
    type=click.Path(dir_okay=False),
    help="A golden reference.npz (default: the one beside ARTIFACT). Without --model, or without torch, "
    "the artifact is checked against its stored PyTorch outputs; with --model the outputs are recomputed "
    "on its images.",
)
@handle_errors
def validate_cmd(artifact: str, **options: Any) -> None:
    """Check ARTIFACT (.onnx, or a TensorRT .engine) against the PyTorch model it was exported from.

    The artifact records its preset, classes, resolution and weights: the model is rebuilt from that.
    Exit 0 parity holds (and no metric regressed from --baseline); 1 parity fails or a metric regressed;
    2 bad usage or input.
    """
    from deploykit.workflows.validate import run_gate

    outcome = run_gate(artifact, **options)
    click.echo(outcome.report.summary())
    if outcome.baseline_written is True:
        click.echo(f"baseline written: {outcome.baseline_path}")
    elif outcome.baseline_written is False:
        click.echo(f"baseline not written: parity failed ({outcome.baseline_path} unchanged)")
    sys.exit(outcome.report.exit_code)
