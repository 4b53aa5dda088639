"""``deploykit.load(path)``: an exported artifact as a classifier, and :func:`artifact_record`: what an
artifact says about itself.

The artifact carries everything needed to use it: an ``.onnx`` file in its ``metadata_props``
(``deploykit.preprocessing``, the data_config; ``deploykit.preset``, ``deploykit.model_args``,
``deploykit.labels``, ``deploykit.weights_state_sha256``), a TensorRT ``.engine``/``.plan`` in its sidecar
JSON, either one also in the ``manifest.json`` beside it (which also names the weights file). Class names:
the ``labels`` argument, else the artifact's own, else the bundled ImageNet-1k names for 1000-class models,
else ``class i``; label files are plain text, one label per line (split on ``\\n`` only); a class name
with a line break is refused wherever it comes from (:mod:`deploykit.core.labels`).

No torch is imported: a device with ONNX Runtime or TensorRT, numpy and Pillow can run this.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES, Precision, Variant, unknown_kind_message
from deploykit.core.errors import ArtifactError, ConfigError, InputError, NonFiniteOutputError
from deploykit.core.record import ArtifactRecord, artifact_record, read_sidecar, session_metadata, variant_of
from deploykit.runtime.base import Runner, run_batched
from deploykit.runtime.postprocess import class_labels, softmax, topk_indices
from deploykit.runtime.preprocess import ImageLike, Preprocessing, _is_single, image_name

#: batch size of predict() when neither the caller nor the artifact's profile says otherwise
DEFAULT_BATCH = 8


@dataclass(frozen=True, kw_only=True)
class TopK:
    cls: int
    label: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "label": self.label, "prob": self.prob}


@dataclass(frozen=True, kw_only=True)
class Prediction:
    image: str
    topk: tuple[TopK, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "topk": [t.to_dict() for t in self.topk]}


class Predictor:
    """An artifact's runner + its preprocessing + class labels.

    ``run(batch)``: a preprocessed float32 ``(N, C, H, W)`` batch -> raw outputs (logits) ``(N, classes)``.
    ``predict(images)``: paths, PIL images or HWC uint8 arrays -> one :class:`Prediction` per image.
    """

    def __init__(
        self,
        runner: Runner,
        preprocessing: Preprocessing,
        num_classes: int,
        *,
        labels: str | Path | Sequence[str] | None = None,
        max_batch: int | None = None,
        artifact: str = "",
        record: ArtifactRecord | None = None,
        variant: Variant | None = None,
    ) -> None:
        self.runner = runner
        self.preprocessing = preprocessing
        self.num_classes = num_classes
        self.labels = class_labels(num_classes, labels)
        self.max_batch = max_batch
        self.artifact = artifact
        #: what the artifact records about itself (preset, model args, labels, weights)
        self.record = record
        #: which graph or engine it is: fp32, fp16, int8 (Q/DQ, TensorRT), int8-cpu (ONNX Runtime
        #: dynamic quantization); None: unknown
        self.variant = variant

    @property
    def precision(self) -> Precision | None:
        """``fp32``, ``fp16`` or ``int8`` (both INT8 variants); None: unknown."""
        return self.variant.precision if self.variant else None

    @property
    def random_weights(self) -> bool:
        """True when the artifact records that it was exported with random weights: its classes mean
        nothing (False when it records weights, or records nothing about them)."""
        return bool(self.record is not None and self.record.random_weights)

    def label(self, cls: int) -> str:
        return self.labels[cls]

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        want = tuple(self.preprocessing.input_size)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise InputError(
                f"{self.artifact}: input batch must be (N, {', '.join(map(str, want))}), got {batch.shape}"
            )
        return run_batched(self.runner, batch.astype(np.float32, copy=False), self.max_batch or len(batch))

    def predict(
        self, images: ImageLike | Iterable[ImageLike], top_k: int = 5, batch_size: int | None = None
    ) -> list[Prediction]:
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        if not items:
            raise InputError("no images given")
        if top_k < 1:
            raise ConfigError(f"top-k must be at least 1, got {top_k}")
        k = min(top_k, self.num_classes)
        size = batch_size if batch_size is not None else (self.max_batch or DEFAULT_BATCH)
        if size < 1 or (self.max_batch and size > self.max_batch):
            raise ConfigError(f"batch size must be in 1..{self.max_batch or 'N'}, got {size}")
        results: list[Prediction] = []
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            logits = self.run(self.preprocessing(chunk))
            if not np.isfinite(logits).all():
                bad = [
                    image_name(chunk[i], start + i) for i in np.flatnonzero(~np.isfinite(logits).all(axis=1))
                ]
                raise NonFiniteOutputError(
                    f"{self.runner.name} output NaN/Inf for {', '.join(bad)}: the result cannot be trusted "
                    "(deploykit validate --locate shows where it starts)"
                )
            probs = softmax(logits)
            for offset, (row, order) in enumerate(zip(probs, topk_indices(probs, k))):
                top = tuple(TopK(cls=int(c), label=self.label(int(c)), prob=float(row[c])) for c in order)
                results.append(Prediction(image=image_name(chunk[offset], start + offset), topk=top))
        return results


# ------------------------------------------------------------------------------------------------ load


def _no_preprocessing(path: Path) -> ArtifactError:
    return ArtifactError(
        f"{path} records no preprocessing (not exported by deploykit, and no manifest.json beside it)"
    )


def load(
    path: str | Path,
    labels: str | Path | Sequence[str] | None = None,
    providers: list[str] | None = None,
) -> Predictor:
    """A :class:`Predictor` for an ``.onnx`` (ONNX Runtime: TensorRT/CUDA execution providers where they
    load, else CPU) or ``.engine``/``.plan`` (TensorRT) artifact exported by deploykit."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    if path.suffix in ONNX_SUFFIXES:
        from deploykit.runtime.ort_runner import OrtRunner, default_providers

        runner = OrtRunner(path, providers=providers or default_providers(tensorrt=True))
        meta = session_metadata(runner.session)
        record = artifact_record(path, meta=meta)
        variant = variant_of(path, meta=meta)
        out_shape = runner.session.get_outputs()[0].shape
        max_batch = None  # the batch axis is dynamic
    elif path.suffix in ENGINE_SUFFIXES:
        from deploykit.engine.runner import TensorRTRunner

        record = artifact_record(path, sidecar=read_sidecar(path))  # a bad sidecar: exit 2 before exit 3
        runner = TensorRTRunner(path)
        variant = runner.variant
        out_shape = runner.output_shape
        max_batch = runner.batch_range[1]
    else:
        raise ArtifactError(unknown_kind_message(path))
    if not record.preprocessing:
        raise _no_preprocessing(path)
    preprocessing = Preprocessing.from_dict(record.preprocessing)
    if path.suffix in ONNX_SUFFIXES:
        runner.check_image_input(tuple(preprocessing.input_size), str(path))
    if record.headless:
        raise ArtifactError(
            f"{path} is a headless export (num_classes 0): it outputs {out_shape[-1]}-dim features, not "
            "classes, so there is nothing to predict (export with --num-classes N for a classifier)"
        )
    if len(out_shape) != 2 or not isinstance(out_shape[-1], int) or out_shape[-1] < 1:
        raise ArtifactError(f"{path}: expected one output (batch, classes), found shape {out_shape}")
    num_classes = int(out_shape[-1])
    names = labels if labels is not None else record.checked_labels()
    return Predictor(
        runner,
        preprocessing,
        num_classes,
        labels=names,
        max_batch=max_batch,
        artifact=str(path),
        record=record,
        variant=variant,
    )
