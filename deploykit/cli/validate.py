"""``deploykit validate``: the CI gate."""

from __future__ import annotations

import sys
import time
from pathlib import Path
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
@click.option(
    "--dataset",
    type=click.Path(),
    help="Your labelled images: an ImageFolder (a folder per class, named by the class's label or index) or "
    "a CSV of path,label rows. Adds accuracy records: top-1/top-5 of the artifact and the reference, the "
    "top-1 drop with its 95% CI and McNemar's p-value.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    help="Largest top-1 drop allowed against the reference, in points (0.5 = half a point; default: the "
    "precision's max_accuracy_drop tolerance).",
)
@click.option(
    "--min-accuracy", type=float, help="The artifact's top-1 floor on --dataset, in percent (e.g. 95)."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False),
    help="With --dataset: the accuracy page (per class, flips).",
)
@handle_errors
def validate_cmd(artifact: str, **options: Any) -> None:
    """Check ARTIFACT (.onnx, or a TensorRT .engine) against the PyTorch model it was exported from.

    The artifact records its preset, classes, resolution and weights: the model is rebuilt from that.
    Exit 0 parity holds (and no metric regressed from --baseline); 1 parity fails or a metric regressed;
    2 bad usage or input.
    """
    from deploykit.workflows.validate import run_gate

    options["dataset"] = dataset_request(
        options.pop("dataset"), options.pop("max_accuracy_drop"), options.pop("min_accuracy")
    )
    outcome = run_gate(artifact, **options)
    click.echo(outcome.report.summary())
    if outcome.baseline_written is True:
        click.echo(f"baseline written: {outcome.baseline_path}")
    elif outcome.baseline_written is False:
        click.echo(f"baseline not written: parity failed ({outcome.baseline_path} unchanged)")
    sys.exit(outcome.report.exit_code)


def dataset_request(path: str | None, max_drop: float | None, min_accuracy: float | None):
    """``--dataset`` and its gate: the points and percent of the command line as fractions, checked."""
    from deploykit.core.errors import ConfigError
    from deploykit.workflows.validate.on_dataset import DatasetRequest

    if path is None:
        given = (
            "--max-accuracy-drop"
            if max_drop is not None
            else "--min-accuracy"
            if min_accuracy is not None
            else None
        )
        if given:
            raise ConfigError(f"{given} needs --dataset DIR")
        return None
    for flag, value in (("--max-accuracy-drop", max_drop), ("--min-accuracy", min_accuracy)):
        if value is not None and not 0 <= value <= 100:
            raise ConfigError(f"{flag} is in points / percent, 0 to 100, got {value:g}")
    return DatasetRequest(
        path=Path(path),
        max_drop=max_drop / 100 if max_drop is not None else None,
        min_accuracy=min_accuracy / 100 if min_accuracy is not None else None,
        progress=DatasetProgress(),
    )


class DatasetProgress:
    """The dataset pass on stderr: a bar on a terminal, else a line every few seconds (none for a pass
    shorter than that)."""

    EVERY_S = 5.0

    def __init__(self) -> None:
        self.bar = None
        self.last = 0.0
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            self._bar(done, total)
            return
        now = time.perf_counter()
        if now - max(self.last, self.t0) >= self.EVERY_S or (done == total and self.last):
            self.last = now
            rate = done / max(now - self.t0, 1e-9)
            click.echo(f"dataset: {done}/{total} images ({rate:.1f} images/s)", err=True)

    def _bar(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.bar is None:
            columns = (TextColumn("dataset"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self.bar = Progress(*columns, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("dataset", total=total)
        self.bar.update(self.task, completed=done)
        if done >= total:
            self.bar.stop()
