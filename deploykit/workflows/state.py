"""The export pipeline's shared state: what :func:`~deploykit.workflows.pipeline.run_export` was asked
for and what each stage produced, the model builder and the parity check every stage uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from deploykit.core.config import ExportConfig
from deploykit.core.onnx_io import serialize
from deploykit.models import get_preset
from deploykit.models.weights import WeightsInfo
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms.onnx_export import OUTPUT_NAME
from deploykit.transforms.simplify import SimplifyResult
from deploykit.validation import ParityResult, compare_outputs

Progress = Callable[[str, str], None]
REPORT_NAME = "report.html"
#: images of the FP16 check (at least); PyTorch runs once per image: the FP32 stages' rows are reused
FP16_IMAGES = 64
#: images the FP16 range check runs on (its PyTorch screen, and the ONNX measurement when the screen is
#: inconclusive: both read every activation)
RANGE_IMAGES = 8
#: batch size of the FP16 stage's bulk runs: small batches keep the activations in cache (measured in
#: docs/measured.md)
BULK_BATCH = 2


def _silent(stage: str, message: str) -> None:
    pass


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)


def build_model(
    preset: str,
    image_size: int | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    weights_format: str | None = None,
    *,
    num_classes: int | None = None,
) -> tuple[nn.Module, WeightsInfo | None]:
    """The registered preset in eval mode, built with a fixed seed, optionally with weights (a reference
    checkpoint or a deploykit state_dict, see :func:`deploykit.models.load_pretrained`) whose head and
    position embedding set the classes and resolution unless given."""
    from deploykit.workflows.model import prepare_model

    config = ExportConfig(
        family=get_preset(preset).family, image_size=image_size, num_classes=num_classes, seed=seed
    )
    prepared = prepare_model(preset, config=config, weights=weights, weights_format=weights_format)
    return prepared.model, prepared.weights_info


def check_parity(stage: str, reference: np.ndarray, candidate: np.ndarray, tolerances) -> ParityResult:
    return compare_outputs({OUTPUT_NAME: reference}, {OUTPUT_NAME: candidate}, tolerances, stage=stage)


@dataclass(kw_only=True)
class ExportState:
    """The inputs of :func:`run_export` and what each stage produced, shared by the stages."""

    spec: Any  # the registry's PresetSpec
    config: ExportConfig
    out: Path
    weights: str | Path | None = None
    weights_format: str | None = None
    inputs_dir: str | Path | None = None
    fp16: bool = False
    fp16_io: bool = False
    engine: bool = False
    timing_cache: str | Path | None = None
    labels: Any = None  # a labels file or a sequence of names (else the config's, else the checkpoint's)
    staging: Path | None = None
    # build (prepared: set before the stages for an in-memory model)
    prepared: Any = None  # deploykit.workflows.model.PreparedModel
    model: nn.Module | None = None
    weights_info: WeightsInfo | None = None
    batch: Any = None  # ValidationBatch
    reference: np.ndarray | None = None
    # rewrite, onnx, simplify, lint
    rewritten: nn.Module | None = None
    records: list = field(default_factory=list)
    exporter_notes: list[str] = field(default_factory=list)
    trace_cache: Any = None  # deploykit.transforms.trace_cache.TraceCacheInfo of the onnx stage
    exported: onnx.ModelProto | None = None
    proto: onnx.ModelProto | None = None  # the FP32 graph as it stands
    simplify: SimplifyResult | None = None
    lint: Any = None
    # fp16
    fp16_proto: onnx.ModelProto | None = None
    fp16_info: dict[str, Any] = field(default_factory=dict)
    worker: Any = None  # the background process (deploykit.workflows.background.Worker)
    jobs: dict[str, Any] = field(default_factory=dict)  # "reference", "rewrites" [, "inputs", "screen"]
    fp16_images: np.ndarray | None = None
    fp16_rows: list[int | None] = field(default_factory=list)  # row of each FP16 image in images, or None
    fp16_reference: np.ndarray | None = None
    # int8 (deploykit.workflows.int8): the options, the calibration set, both graphs and their record
    int8: Any = None  # Int8Options, None: no INT8
    calibration: Any = None  # CalibrationSet, None: the bundled images
    int8_proto: onnx.ModelProto | None = None
    int8_cpu_proto: onnx.ModelProto | None = None
    int8_info: dict[str, Any] = field(default_factory=dict)
    int8_images: np.ndarray | None = None  # the images both INT8 checks ran on
    int8_reference: np.ndarray | None = None  # their PyTorch FP32 outputs
    # per check (key): the parity result, its reference and candidate logits, and the graph that ran
    parity: dict[str, ParityResult] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: dict[str, np.ndarray] = field(default_factory=dict)
    graphs: dict[str, onnx.ModelProto | None] = field(default_factory=dict)
    locate: Any = None  # LocateReport of a rejected export
    # engine, manifest
    artifacts: dict[str, bytes] = field(default_factory=dict)
    engine_info: dict[str, Any] = field(default_factory=lambda: {"status": "not requested"})
    reference_info: dict[str, Any] = field(default_factory=dict)  # reference.npz: file, sha256, bytes
    manifest: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> np.ndarray:
        return self.batch.images

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.model.input_size)

    def check(
        self,
        key: str,
        label: str,
        candidate: np.ndarray,
        graph: onnx.ModelProto | None,
        reference: np.ndarray | None = None,
        precision: str = "fp32",
    ) -> ParityResult:
        """Parity of ``candidate`` logits (default reference: the PyTorch FP32 logits), kept under ``key``."""
        reference = self.reference if reference is None else reference
        self.parity[key] = check_parity(label, reference, candidate, self.config.tolerances(precision))
        self.references[key], self.candidates[key], self.graphs[key] = reference, candidate, graph
        return self.parity[key]

    def failed(self) -> str | None:
        """The key of the first check that failed."""
        return next((k for k, p in self.parity.items() if not p.passed), None)

    def logits(self, graph: onnx.ModelProto, images: np.ndarray | None = None) -> np.ndarray:
        images = self.images if images is None else images
        return run_batched(OrtRunner(serialize(graph)), images, self.config.batch.max)

    def end_background(self) -> None:
        """The export is done, failed or interrupted: the background process ends, its files go."""
        if self.worker is not None:
            self.worker.close()
