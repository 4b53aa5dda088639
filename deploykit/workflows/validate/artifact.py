"""The artifact under test: its record and graph, a runner for it, its parity against reference logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES, unknown_kind_message
from deploykit.core.errors import ArtifactError
from deploykit.core.record import (
    artifact_record,
    metadata_of,
    read_sidecar,
    variant_of,
)
from deploykit.validation.metrics import ParityResult, compare_outputs


def onnx_runner(path: Path, proto, expected: tuple[int, ...]):
    from deploykit.runtime.ort_runner import OrtRunner

    runner = OrtRunner(path, spin=False)  # PyTorch, the reference, runs between its batches
    runner.check_image_input(tuple(expected), str(path))  # one float image input of the model's size
    return runner, variant_of(path, proto=proto), proto


def engine_source(path: Path):
    """The ONNX file an engine was built from, when it is beside the engine (for --locate)."""
    from deploykit.core.onnx_io import load_onnx

    source = path.parent / str((read_sidecar(path).get("source_onnx") or {}).get("file") or "")
    return load_onnx(source) if source.is_file() and source.suffix == ".onnx" else None


def read_artifact(path: Path):
    """``(record, proto)``: the artifact's record and, for an ONNX file, its checked graph."""
    if path.suffix in ONNX_SUFFIXES:
        from deploykit.core.onnx_io import load_onnx

        proto = load_onnx(path)
        return artifact_record(path, meta=metadata_of(proto)), proto
    if path.suffix in ENGINE_SUFFIXES:
        return artifact_record(path), None
    raise ArtifactError(unknown_kind_message(path))


def artifact_parity(reference: np.ndarray, candidate: np.ndarray, tolerances, precision: str) -> ParityResult:
    """The artifact's logits against the PyTorch FP32 ones (recomputed, or stored in a reference)."""
    return compare_outputs(
        {"logits": reference.astype(np.float32)},
        {"logits": candidate.astype(np.float32)},
        tolerances,
        stage=f"{precision} artifact",
    )


def artifact_runner(path: Path, proto, expected: tuple[int, ...]):
    """``(runner, variant)`` of the artifact: ONNX Runtime for an ONNX file (its graph ``proto``, checked
    to take one image of ``expected`` C, H, W), the torch-free TensorRT runner for an engine."""
    if proto is not None:
        runner, variant, _ = onnx_runner(path, proto, expected)
        return runner, variant
    from deploykit.engine.runner import TensorRTRunner

    runner = TensorRTRunner(path)
    return runner, runner.variant
