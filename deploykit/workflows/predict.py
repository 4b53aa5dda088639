"""``deploykit.load(path)``: an exported artifact as a classifier.

The artifact carries everything needed to use it: an ``.onnx`` file its preprocessing in
``metadata_props`` (``deploykit.preprocessing``, the preset's data_config), a TensorRT ``.engine``/``.plan``
in its sidecar JSON (or the ``manifest.json`` beside it). ImageNet-1k class names are bundled for
1000-class models; other label files are plain text, one label per line.

No torch is imported: a device with ONNX Runtime or TensorRT, numpy and Pillow can run this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES
from deploykit.core.errors import ArtifactError, ConfigError, InputError
from deploykit.runtime.base import Runner, run_batched
from deploykit.runtime.postprocess import class_labels, softmax, topk_indices
from deploykit.runtime.preprocess import ImageLike, Preprocessing, _is_single, image_name

#: batch size of predict() when neither the caller nor the artifact's profile says otherwise
DEFAULT_BATCH = 8


@dataclass(frozen=True)
class TopK:
    cls: int
    label: str
    prob: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "label": self.label, "prob": self.prob}


@dataclass(frozen=True)
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
        labels: str | Path | Sequence[str] | None = None,
        max_batch: int | None = None,
        artifact: str = "",
    ) -> None:
        self.runner = runner
        self.preprocessing = preprocessing
        self.num_classes = num_classes
        self.labels = class_labels(num_classes, labels)
        self.max_batch = max_batch
        self.artifact = artifact

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
            probs = softmax(self.run(self.preprocessing(chunk)))
            for offset, (row, order) in enumerate(zip(probs, topk_indices(probs, k))):
                top = tuple(TopK(int(c), self.label(int(c)), float(row[c])) for c in order)
                results.append(Prediction(image_name(chunk[offset], start + offset), top))
        return results


# ------------------------------------------------------------------------------------------------ load


def _manifest_preprocessing(path: Path) -> dict[str, Any] | None:
    manifest = path.parent / "manifest.json"
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("preprocessing")
    except (OSError, ValueError, AttributeError):
        return None


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
        meta = runner.session.get_modelmeta().custom_metadata_map
        record = json.loads(meta["deploykit.preprocessing"]) if "deploykit.preprocessing" in meta else None
        record = record or _manifest_preprocessing(path)
        out_shape = runner.session.get_outputs()[0].shape
        max_batch = None  # the batch axis is dynamic
    elif path.suffix in ENGINE_SUFFIXES:
        from deploykit.engine.runner import TensorRTRunner, read_sidecar

        runner = TensorRTRunner(path)
        record = read_sidecar(path).get("preprocessing") or _manifest_preprocessing(path)
        out_shape = runner.output_shape
        max_batch = runner.batch_range[1]
    else:
        raise ArtifactError(
            f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
        )
    if not record:
        raise _no_preprocessing(path)
    preprocessing = Preprocessing.from_dict(record)
    if len(out_shape) != 2 or not isinstance(out_shape[-1], int) or out_shape[-1] < 1:
        raise ArtifactError(f"{path}: expected one output (batch, classes), found shape {out_shape}")
    num_classes = int(out_shape[-1])
    return Predictor(runner, preprocessing, num_classes, labels, max_batch, str(path))


def predict_command(
    artifact: str,
    images: Sequence[str],
    *,
    top_k: int = 5,
    labels: str | None = None,
    batch_size: int | None = None,
    json_out: str | None = None,
) -> None:
    """``deploykit predict``: classify ``images`` (files or folders) and print a table (and write JSON)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from deploykit.core.io import atomic_write_text
    from deploykit.runtime.preprocess import expand_image_paths
    from deploykit.workflows.predict import load

    files = expand_image_paths(images)
    predictor = load(artifact, labels=labels)
    results = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    table = Table(title=f"{artifact} ({predictor.runner.name})")
    table.add_column("image", overflow="fold")
    for col in ("#", "class", "label", "prob"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for result in results:
        for rank, top in enumerate(result.topk, 1):
            table.add_row(
                result.image if rank == 1 else "", str(rank), str(top.cls), top.label, f"{top.prob:.4f}"
            )
        table.add_section()
    Console(width=max(Console().width, 100)).print(table)
    if json_out:
        atomic_write_text(json_out, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
