"""Parity without PyTorch: the artifact against the outputs its export stored in its golden reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import sha256_file
from deploykit.core.record import (
    ArtifactRecord,
)
from deploykit.runtime.base import run_batched
from deploykit.validation.reference import REFERENCE_NAME, GoldenReference, check_reference, read_reference
from deploykit.workflows.validate import on_dataset
from deploykit.workflows.validate.artifact import artifact_parity, artifact_runner, read_artifact
from deploykit.workflows.validate.on_dataset import DatasetRequest
from deploykit.workflows.validate.report import ValidationReport


def torch_available() -> bool:
    """Whether PyTorch imports here (a device install has no torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def golden_of(path: Path, record: ArtifactRecord, reference: str | Path | None) -> GoldenReference:
    """The golden reference of ``path``: ``reference``, else the one beside it; checked against what the
    artifact records (its sha256, else its identity)."""
    ref_path = Path(reference) if reference is not None else path.parent / REFERENCE_NAME
    if reference is None and not ref_path.is_file():
        raise ConfigError(
            f"no {REFERENCE_NAME} beside {path} and PyTorch is not installed: copy the export's {REFERENCE_NAME} "
            "next to the artifact, pass --reference FILE, or install torch to recompute"
        )
    # the hash the artifact records is checked first, on the file's bytes: a wrong file is refused before
    # anything in it is opened
    golden = read_reference(ref_path, record.reference_sha256, artifact=path)
    check_reference(
        golden,
        str(path),
        {
            "reference_sha256": record.reference_sha256,
            "preset": record.preset,
            "model_args": record.model_args,
            "weights_state_sha256": record.weights_state_sha256,
        },
    )
    return golden


def reference_fact(golden: GoldenReference, outputs: str) -> dict[str, Any]:
    return {"file": golden.path, "sha256": golden.sha256, "outputs": outputs}


def validate_with_reference(
    artifact: str | Path,
    *,
    reference: str | Path | None = None,
    batch: int = 32,
    dataset: DatasetRequest | None = None,
) -> ValidationReport:
    """Parity of ``artifact`` against the PyTorch FP32 outputs its export stored in its golden reference
    (``reference``, else ``reference.npz`` beside it), on the reference's images, with the reference's
    tolerances for the artifact's precision: no PyTorch needed. ONNX files run on ONNX Runtime, engines on
    the torch-free TensorRT runner. With ``dataset``, the artifact also runs on every image of the user's
    dataset and its answers are paired with the ones the export recorded for it (:mod:`.on_dataset`)."""
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    record, proto = read_artifact(path)
    golden = golden_of(path, record, reference)
    shape = (golden.identity.get("input") or {}).get("shape") or []
    runner, precision = artifact_runner(path, proto, tuple(int(d) for d in shape[1:]))
    images, outputs = golden.batch(precision)
    candidate = run_batched(runner, images, batch)
    parity = artifact_parity(outputs, candidate, golden.tolerances(precision), precision)
    facts = {
        "sha256": sha256_file(path),
        "images": len(images),
        "inputs": "reference",
        "reference": reference_fact(golden, "stored (PyTorch FP32 at export)"),
        "family": str(golden.identity.get("family") or ""),
        "weights": None,
        "model_args": golden.identity.get("model_args"),
        "random_weights": golden.identity.get("random_weights"),
    }
    preset = str(golden.identity.get("preset") or record.preset or "?")
    outcome = None
    if dataset is not None:
        side = on_dataset.ArtifactSide(
            runner=runner,
            labels=record.checked_labels(),
            num_classes=int(outputs.shape[1]),
            max_drop=golden.tolerances(precision).max_accuracy_drop,
        )
        outcome = on_dataset.with_recorded(dataset, golden.preprocessing, side=side, golden=golden)
    return ValidationReport(
        artifact=str(path),
        preset=preset,
        precision=precision,
        runtime=runner.name,
        parity=parity,
        facts=facts,
        dataset=outcome,
    )
