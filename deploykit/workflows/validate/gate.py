"""``deploykit validate``: which check runs (PyTorch, or the stored reference), the baseline and the reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deploykit.core.config import resolve_config
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.record import (
    artifact_record,
)
from deploykit.validation.baseline import compare_baseline, read_baseline, write_baseline
from deploykit.validation.reference import REFERENCE_NAME
from deploykit.workflows.validate.against_reference import torch_available, validate_with_reference
from deploykit.workflows.validate.against_torch import validate_artifact
from deploykit.workflows.validate.on_dataset import DatasetRequest
from deploykit.workflows.validate.rebuild import artifact_preset
from deploykit.workflows.validate.report import ValidationReport, write_json, write_junit


@dataclass(frozen=True, kw_only=True)
class GateOutcome:
    """What ``deploykit validate`` did: the report (its records decide the exit code) and, with
    ``update_baseline``, whether the baseline was written (it is not when parity failed)."""

    report: ValidationReport
    baseline_path: str | Path | None = None
    baseline_written: bool | None = None


def run_gate(
    artifact: str | Path,
    *,
    model: str | None = None,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    inputs_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    json_out: str | Path | None = None,
    junit_out: str | Path | None = None,
    html_out: str | Path | None = None,
    locate: bool = False,
    baseline_path: str | Path | None = None,
    update_baseline: bool = False,
    reference: str | Path | None = None,
    dataset: DatasetRequest | None = None,
) -> GateOutcome:
    """``deploykit validate``: validate, compare with the baseline, write the requested reports.
    ``model``: the preset, by default the one the artifact records. Without PyTorch (or with
    ``reference`` and no ``model``/``weights``) the artifact is checked against its golden reference's
    stored outputs; with PyTorch the model is rebuilt and run (on the reference's images when given).
    ``dataset``: the accuracy on the user's labelled images too (:mod:`.on_dataset`); ``html_out``: its
    page (per-class accuracy, the images that changed their answer)."""
    if update_baseline and not baseline_path:
        raise ConfigError("--update-baseline needs --baseline FILE")
    if html_out is not None and dataset is None:
        raise ConfigError("--html renders the accuracy on a dataset: give --dataset DIR")
    # read (and check) the baseline before anything runs: a bad file is bad input, whatever parity says
    baseline = read_baseline(baseline_path) if baseline_path and not update_baseline else None
    options = {"reference": reference, "dataset": dataset}
    if not torch_available() or (reference is not None and model is None and weights is None):
        _torch_free_flags(model=model, weights=weights, locate=locate, inputs_dir=inputs_dir)
        report = validate_with_reference(artifact, **options)
        config = resolve_config(report.facts["family"], config_path)
    else:
        torch_options = {"weights": weights, "weights_format": weights_format, "inputs_dir": inputs_dir}
        report, config = _with_torch(artifact, model, config_path, locate=locate, **torch_options, **options)
    if baseline is not None:
        report.baseline = compare_baseline(report, baseline, config.baseline_factor)
    if json_out:
        write_json(report, json_out)
    if junit_out:
        write_junit(report, junit_out)
    if html_out:
        from deploykit.workflows.validate.page import write_accuracy_page

        write_accuracy_page(report, html_out)
    written = None
    if update_baseline:
        written = report.passed
        if written:
            write_baseline(report, baseline_path)
    return GateOutcome(report=report, baseline_path=baseline_path, baseline_written=written)


def _with_torch(artifact, model: str | None, config_path, **options):
    """The report of the PyTorch path and the config it ran with (``model``: the preset, by default the
    one the artifact records)."""
    path = Path(artifact)
    if model is None:
        if not path.is_file():
            raise ArtifactError(f"artifact not found: {path}")
        preset = artifact_preset(path, artifact_record(path))
    else:
        from deploykit.models import get_preset

        preset = get_preset(model)  # checked against the artifact's record by validate_artifact
    config = resolve_config(preset.family, config_path)
    report = validate_artifact(
        artifact, model if model is not None else preset.name, config=config, **options
    )
    return report, config


def _torch_free_flags(*, model, weights, locate: bool, inputs_dir) -> None:
    """The flags that need PyTorch, refused on the path that runs without it."""
    if not torch_available() and (model is not None or weights is not None or locate):
        given = "--model" if model is not None else "--weights" if weights is not None else "--locate"
        raise ConfigError(
            f"{given} runs the PyTorch model, which is not installed here; without it validate checks "
            f"against the export's {REFERENCE_NAME}"
        )
    if inputs_dir is not None or locate:
        raise ConfigError(
            f"{'--inputs' if inputs_dir is not None else '--locate'} needs the PyTorch model (--model); "
            f"the stored reference has its own images"
        )
