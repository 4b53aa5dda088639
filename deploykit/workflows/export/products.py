"""What the export's stages make: one typed, frozen product per stage, the parity checks they record
(:class:`Checks`) and the run they share (:class:`ExportRun`: the request, the model, the staging folder,
the background process)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from deploykit.core.config import ExportConfig, Tolerances
from deploykit.core.onnx_io import serialize
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms.onnx_export import OUTPUT_NAME
from deploykit.transforms.simplify import SimplifyResult
from deploykit.transforms.trace_cache import TraceCacheInfo
from deploykit.validation import ParityResult, compare_outputs
from deploykit.validation.inputs import ValidationBatch
from deploykit.workflows.export.model import PreparedModel
from deploykit.workflows.export.request import ExportRequest

if TYPE_CHECKING:
    from torch import nn

    from deploykit.transforms.lint import LintReport
    from deploykit.transforms.rewrites import RewriteRecord
    from deploykit.validation.calibration import CalibrationSet
    from deploykit.validation.dataset import LabelledDataset
    from deploykit.validation.locate import LocateReport
    from deploykit.workflows.export.background import Job, Worker
    from deploykit.workflows.export.dataset import DatasetResult

Progress = Callable[[str, str], None]
REPORT_NAME = "report.html"
#: images of the FP16 check (at least); PyTorch runs once per image: the FP32 stages' rows are reused
FP16_IMAGES = 64
#: images the FP16 range check runs on (its PyTorch screen, and the ONNX measurement when the screen is
#: inconclusive: both read every activation)
RANGE_IMAGES = 8
#: batch size of the FP16 stage's bulk runs: small batches keep the activations in cache (docs/measured.md)
BULK_BATCH = 2


def silent(stage: str, message: str) -> None:
    """A progress callback that says nothing (the Python API's default)."""


def check_parity(
    stage: str, reference: np.ndarray, candidate: np.ndarray, tolerances: Tolerances
) -> ParityResult:
    return compare_outputs({OUTPUT_NAME: reference}, {OUTPUT_NAME: candidate}, tolerances, stage=stage)


@dataclass(kw_only=True)
class Checks:
    """Every parity check of one export, by key (``rewrites``, ``onnx``, ``simplified``, ``dynamic batch``,
    ``fp16``, ``int8``, ``int8-cpu``): the result, its reference and candidate logits, the graph that ran."""

    parity: dict[str, ParityResult] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: dict[str, np.ndarray] = field(default_factory=dict)
    graphs: dict[str, onnx.ModelProto | None] = field(default_factory=dict)

    def record(
        self,
        key: str,
        *,
        label: str,
        reference: np.ndarray,
        candidate: np.ndarray,
        graph: onnx.ModelProto | None,
        tolerances: Tolerances,
    ) -> ParityResult:
        self.parity[key] = check_parity(label, reference, candidate, tolerances)
        self.references[key], self.candidates[key], self.graphs[key] = reference, candidate, graph
        return self.parity[key]

    def drop(self, key: str) -> None:
        for checks in (self.parity, self.references, self.candidates, self.graphs):
            checks.pop(key, None)

    def failed(self) -> str | None:
        """The key of the first check that failed."""
        return next((k for k, p in self.parity.items() if not p.passed), None)


@dataclass(kw_only=True)
class ExportRun:
    """One export in progress: what was asked, the model, where files are staged, the background process
    and its jobs, the checks recorded so far and each stage's seconds."""

    request: ExportRequest
    prepared: PreparedModel
    out: Path
    staging: Path
    checks: Checks = field(default_factory=Checks)
    worker: Worker | None = None
    jobs: dict[str, Job] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> ExportConfig:
        return self.request.config

    @property
    def model(self) -> nn.Module:
        return self.prepared.model

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.prepared.model.input_size)

    def logits(self, graph: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
        """ONNX Runtime's logits of ``graph`` on ``images`` (the batch profile's maximum at a time)."""
        return run_batched(OrtRunner(serialize(graph)), images, self.config.batch.max)

    def end_background(self) -> None:
        """The export is done, failed or interrupted: the background process ends, its files go."""
        if self.worker is not None:
            self.worker.close()


# ------------------------------------------------------------------------------------------- products
@dataclass(frozen=True, kw_only=True)
class Built:
    """``build``: the validation images the FP32 stages check on."""

    batch: ValidationBatch

    @property
    def images(self) -> np.ndarray:
        return self.batch.images


@dataclass(frozen=True, kw_only=True)
class Rewritten:
    """``rewrite``: the model with its export-friendly module swaps, and what each swap did."""

    module: nn.Module
    records: tuple[RewriteRecord, ...]


@dataclass(frozen=True, kw_only=True)
class Fp32Graph:
    """``onnx`` (then ``simplify``, ``lint``): the FP32 graph and how it was made."""

    exported: onnx.ModelProto
    #: the graph as it stands (the simplified one once ``simplify`` ran)
    proto: onnx.ModelProto
    #: the PyTorch FP32 logits of the validation images (the reference of every FP32 check)
    reference: np.ndarray
    #: the exporter that made it (``torchscript`` when dynamo failed and the fallback ran)
    exporter: str
    exporter_notes: tuple[str, ...] = ()
    trace_cache: TraceCacheInfo | None = None
    simplify: SimplifyResult | None = None
    lint: LintReport | None = None


@dataclass(frozen=True, kw_only=True)
class Fp16Result:
    """``fp16``: the mixed-precision graph, the images it was checked on and their PyTorch reference."""

    proto: onnx.ModelProto
    images: np.ndarray
    reference: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Int8Result:
    """``int8``: both INT8 graphs, the images they were gated on and their PyTorch reference."""

    proto: onnx.ModelProto
    cpu_proto: onnx.ModelProto
    images: np.ndarray
    reference: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Staged:
    """The export's files, written into the staging folder: the ONNX files with their records and the
    golden reference, and what only their bytes tell (the reference's record, size ratios)."""

    #: file name -> bytes
    files: dict[str, bytes]
    #: ``reference.npz``: file, sha256, bytes, images, int8_images
    reference: dict[str, Any]
    #: the FP16 file's size against the FP32 file's
    fp16_extra: dict[str, Any] = field(default_factory=dict)
    #: the INT8 files' size ratios: ``{"tensorrt": {...}, "cpu": {...}}``
    int8_extra: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Products:
    """What the stages have made so far (the manifest, the report and a rejection read it)."""

    built: Built | None = None
    calibration: CalibrationSet | None = None
    #: ``--dataset``: the labelled images (listed when the export starts) and their accuracies (at the end)
    listing: LabelledDataset | None = None
    dataset: DatasetResult | None = None
    rewritten: Rewritten | None = None
    graph: Fp32Graph | None = None
    fp16: Fp16Result | None = None
    int8: Int8Result | None = None
    engine: dict[str, Any] = field(default_factory=lambda: {"status": "not requested"})
    locate: LocateReport | None = None


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    out_dir: Path
    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)
