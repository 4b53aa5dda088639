"""``deploykit validate --dataset DIR``: accuracy on the user's own labelled images, paired against the
reference — PyTorch FP32 of the recorded model when torch is here (its logits also give the output parity
records, on the same images), else the answers the export recorded for that dataset in its golden
reference. The artifact's answers and the reference's become ``accuracy`` records
(:mod:`deploykit.validation.accuracy`) beside the parity records of the same report.

Without torch, the dataset must be the one the export recorded (same files, same labels): a file added,
removed, changed or relabelled is one line naming the first difference, exit 2 — unless only the accuracy
floor (``min_accuracy``) was asked for, which needs no reference: then only it runs, and the report says
why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from deploykit.core.errors import ConfigError
from deploykit.runtime.base import Runner
from deploykit.runtime.postprocess import class_labels
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation.accuracy import PairedAccuracy, accuracy_checks, paired_accuracy
from deploykit.validation.dataset import LabelledDataset, read_dataset
from deploykit.validation.metrics import Check
from deploykit.validation.reference import GoldenReference
from deploykit.workflows.dataset_pass import Answers, DatasetPass, Progress, run_dataset_pass


@dataclass(frozen=True, kw_only=True)
class DatasetRequest:
    """``--dataset DIR`` and what its accuracy is held to: ``max_drop`` (a fraction; None: the precision's
    ``max_accuracy_drop`` tolerance) and ``min_accuracy`` (a fraction; None: no floor); ``progress`` hears
    of every batch."""

    path: Path
    max_drop: float | None = None
    min_accuracy: float | None = None
    progress: Progress | None = None

    def gate(self, max_drop: float | None) -> AccuracyGate:
        """The gate, with ``max_drop`` (the tolerances') unless the request names its own."""
        return AccuracyGate(
            max_drop=self.max_drop if self.max_drop is not None else max_drop, min_accuracy=self.min_accuracy
        )


@dataclass(frozen=True, kw_only=True)
class AccuracyGate:
    """What the accuracy records are held to: the largest top-1 drop against the reference (a fraction;
    None: not gated) and the artifact's top-1 floor (a fraction; None: none)."""

    max_drop: float | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True, kw_only=True)
class DatasetOutcome:
    """The dataset's part of a report: the pass, the paired comparison (None: no reference side), the
    records and, when only the floor ran, why."""

    dataset: LabelledDataset
    found: DatasetPass
    paired: PairedAccuracy | None
    checks: list[Check]
    floor_only: str | None = None
    class_names: tuple[str, ...] = ()

    def facts(self) -> dict:
        found = self.found
        return {
            "dataset": str(self.dataset.source),
            "images": len(found.rows),
            "seconds": round(found.seconds, 3),
            "images_per_second": round(found.images_per_second, 2),
            "inference_seconds": found.inference_seconds,
            "batch": found.batch,
            "floor_only": self.floor_only,
        }


@dataclass(frozen=True, kw_only=True)
class ArtifactSide:
    """What both entry points need of the artifact under test: its runner, its class names (None: none
    recorded), its class count and its precision's ``max_accuracy_drop``."""

    runner: Runner
    labels: tuple[str, ...] | None
    num_classes: int
    max_drop: float | None

    def read(self, request: DatasetRequest) -> LabelledDataset:
        return read_dataset(request.path, labels=self.labels, num_classes=self.num_classes)

    def outcome(self, request: DatasetRequest, dataset, found: DatasetPass, floor_only) -> DatasetOutcome:
        return _outcome(
            dataset,
            found,
            request.gate(self.max_drop),
            class_labels(self.num_classes, self.labels),
            floor_only=floor_only,
        )


def with_torch(
    request: DatasetRequest, preprocessing: Preprocessing, *, side: ArtifactSide, reference: Runner
) -> DatasetOutcome:
    """The reference and the artifact over every image of the dataset: their logits (for parity) and their
    answers."""
    dataset = side.read(request)
    runners = {"reference": reference, "artifact": side.runner}
    found = run_dataset_pass(dataset, preprocessing, runners, keep_logits=True, progress=request.progress)
    return side.outcome(request, dataset, found, floor_only=None)


def with_recorded(
    request: DatasetRequest, preprocessing: Preprocessing, *, side: ArtifactSide, golden: GoldenReference
) -> DatasetOutcome:
    """The artifact over every image of the dataset, paired with the answers ``golden`` recorded for it."""
    dataset = side.read(request)
    recorded = golden.dataset
    why = _unusable(recorded, dataset, golden)
    if why is not None and request.min_accuracy is None:
        raise ConfigError(f"{why}; pass --min-accuracy for the accuracy floor alone")
    floor_only = f"{why}: only --min-accuracy ran" if why is not None else None
    known, expected = {}, None
    if why is None:
        known = {"reference": Answers(topk=recorded.top5, probs=recorded.probs)}
        expected = recorded.rows
    found = run_dataset_pass(
        dataset,
        preprocessing,
        {"artifact": side.runner},
        known=known,
        expected=expected,
        stop_on_change=request.min_accuracy is None,  # a changed file: exit 2, unless the floor can run
        progress=request.progress,
    )
    if found.changed is not None:
        floor_only = (
            f"the dataset differs from the one the export recorded ({found.changed}): only --min-accuracy ran"
        )
        found = replace(found, answers={"artifact": found.answers["artifact"]}, thumbnails={})
    return side.outcome(request, dataset, found, floor_only=floor_only)


def _unusable(recorded, dataset: LabelledDataset, golden: GoldenReference) -> str | None:
    """Why the recorded answers cannot be the reference for ``dataset`` (None: they can)."""
    from deploykit.validation.dataset import first_difference

    if recorded is None:
        return (
            f"{golden.path} records no dataset (export with --dataset DIR to record one) and PyTorch is not "
            "here to compute the reference"
        )
    found = [(e.name, "", e.label) for e in dataset.entries]  # files are compared as they are read
    before = [(r[0], "", r[2]) for r in recorded.rows]
    difference = first_difference(before, found)
    if difference is not None:
        return f"the dataset differs from the one the export recorded: {difference}"
    return None


def _outcome(dataset, found: DatasetPass, gate: AccuracyGate, class_names, *, floor_only) -> DatasetOutcome:
    labels = found.labels
    artifact = found.answers["artifact"]
    artifact_top1 = float((artifact.top1 == labels).mean()) if len(labels) else 0.0
    paired = None
    if "reference" in found.answers:
        paired = paired_accuracy(labels, found.answers["reference"].topk, artifact.topk)
    checks = accuracy_checks(
        paired, artifact_top1=artifact_top1, max_drop=gate.max_drop, min_accuracy=gate.min_accuracy
    )
    return DatasetOutcome(
        dataset=dataset,
        found=found,
        paired=paired,
        checks=checks,
        floor_only=floor_only,
        class_names=tuple(class_names),
    )
