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

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES, onnx_variant
from deploykit.core.errors import ArtifactError, ConfigError, InputError, NonFiniteOutputError
from deploykit.core.labels import check_labels
from deploykit.core.schema import MANIFEST, read_json, read_metadata, validate
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
        record: ArtifactRecord | None = None,
        variant: str | None = None,
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
    def precision(self) -> str | None:
        """``fp32``, ``fp16`` or ``int8`` (both INT8 variants); None: unknown."""
        from deploykit.core.artifacts import variant_precision

        return variant_precision(self.variant) if self.variant else None

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
                top = tuple(TopK(int(c), self.label(int(c)), float(row[c])) for c in order)
                results.append(Prediction(image_name(chunk[offset], start + offset), top))
        return results


# -------------------------------------------------------------------------------------------- record


@dataclass(frozen=True)
class ArtifactRecord:
    """What an artifact records about the model it was exported from. Each field comes from the artifact
    itself (ONNX metadata, an engine's sidecar), else from the ``manifest.json`` beside it when that
    describes the same export; ``None``: not recorded."""

    path: Path
    preset: str | None = None
    #: ``{"num_classes": N, "image_size": S}``; num_classes 0: headless (the output is features)
    model_args: dict[str, int] | None = None
    labels: tuple[str, ...] | None = None
    #: fingerprint of the exported weights' content (deploykit.workflows.model.state_sha256)
    weights_state_sha256: str | None = None
    #: where the weights came from: "file", "memory" (a model handed to the Python API), "random"
    weights_source: str | None = None
    #: the manifest's record of the weights file: path, sha256 (of the file), format, ...
    weights_file: dict[str, Any] | None = None
    seed: int | None = None
    preprocessing: dict[str, Any] | None = None
    #: sha256 of the golden reference (reference.npz) the export wrote beside it
    reference_sha256: str | None = None
    #: the manifest.json the record was completed from (None: none beside it, or another export's)
    manifest: Path | None = None

    @property
    def num_classes(self) -> int | None:
        return (self.model_args or {}).get("num_classes")

    @property
    def image_size(self) -> int | None:
        return (self.model_args or {}).get("image_size")

    @property
    def headless(self) -> bool:
        return self.num_classes == 0

    @property
    def random_weights(self) -> bool | None:
        """True: exported with random weights; False: with weights; None: the artifact does not say."""
        if self.weights_state_sha256 or self.weights_file or self.weights_source in ("file", "memory"):
            return False
        return True if self.weights_source == "random" else None

    def describe_args(self) -> str:
        args = self.model_args or {}
        return ", ".join(f"{k} {args[k]}" for k in ("num_classes", "image_size") if k in args) or "?"


def _args(value: Any) -> dict[str, Any] | None:
    """Recorded model args: classes and resolution (ints) plus any architecture overrides."""
    if not isinstance(value, dict):
        return None
    sizes = {k: value[k] for k in ("num_classes", "image_size") if isinstance(value.get(k), int)}
    if not sizes:
        return None
    return {k: v for k, v in value.items() if k not in ("num_classes", "image_size")} | sizes


def _names(value: Any) -> tuple[str, ...] | None:
    """Recorded class names, as recorded: whoever uses them checks them (:func:`load`, ``deploykit
    triton``), so a name that is not one line of text is refused there, never turned into another."""
    return tuple(value) if isinstance(value, list) and value else None


@lru_cache(maxsize=8)
def _onnx_metadata(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    from deploykit.core.onnx_io import read_onnx_graph

    return {p.key: p.value for p in read_onnx_graph(path).metadata_props}


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read once per version of the file)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    stat = path.stat()
    return dict(_onnx_metadata(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


def _from_metadata(path: Path, meta: Mapping[str, str]) -> ArtifactRecord:
    # checked against deploykit.core.schema.METADATA, JSON values parsed: a bad value is exit 2, one line
    record = read_metadata(meta, path)
    args = _args(record.get("deploykit.model_args"))
    sha = record.get("deploykit.weights_state_sha256")
    return ArtifactRecord(
        path,
        preset=record.get("deploykit.preset"),
        model_args=args,
        labels=_names(record.get("deploykit.labels")),
        weights_state_sha256=sha,
        # an export that records its model args records the weights' hash whenever it had weights
        weights_source="random" if args is not None and sha is None else None,
        preprocessing=record.get("deploykit.preprocessing"),
        reference_sha256=record.get("deploykit.reference_sha256"),
    )


def _from_sidecar(path: Path, sidecar: Mapping[str, Any]) -> ArtifactRecord:
    random = sidecar.get("random_weights")
    return ArtifactRecord(
        path,
        preset=sidecar.get("preset") if isinstance(sidecar.get("preset"), str) else None,
        model_args=_args(sidecar.get("model_args")),
        labels=_names(sidecar.get("labels")),
        weights_state_sha256=sidecar.get("weights_state_sha256") or None,
        weights_source="random" if random is True else None,
        preprocessing=sidecar.get("preprocessing") or None,
        reference_sha256=sidecar.get("reference_sha256") or None,
    )


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The ``manifest.json`` beside ``path`` (None: there is none), checked against
    :data:`deploykit.core.schema.MANIFEST`: one that is not JSON, not an object, or whose fields deploykit
    reads are of the wrong kind is one :class:`ArtifactError` line (exit 2), never silently ignored."""
    file = path.parent / "manifest.json"
    try:
        manifest = read_json(file, "a deploykit manifest")
    except FileNotFoundError:
        return None
    return validate(manifest, MANIFEST, file)


def _manifest_args(manifest: dict[str, Any]) -> dict[str, int] | None:
    """The model args a manifest records (older manifests: from the I/O shapes)."""
    model = manifest.get("model")
    if isinstance(model, dict) and _args(model.get("model_args")):
        return _args(model.get("model_args"))
    try:
        (inp,), (out,) = manifest["io"]["inputs"], manifest["io"]["outputs"]
        return _args({"num_classes": out["shape"][-1], "image_size": inp["shape"][-1]})
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _from_manifest(path: Path, manifest: dict[str, Any]) -> ArtifactRecord:
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    weights = manifest.get("weights") if isinstance(manifest.get("weights"), dict) else None
    source = model.get("weights") if model.get("weights") in ("file", "memory", "random") else None
    if source is None and weights is not None:
        source = "file"
    elif source is None and manifest.get("random_weights") is True:
        source = "random"
    config = manifest.get("export_config")
    seed = config.get("seed") if isinstance(config, dict) else None
    return ArtifactRecord(
        path,
        preset=manifest.get("preset") if isinstance(manifest.get("preset"), str) else None,
        model_args=_manifest_args(manifest),
        labels=_names(manifest.get("labels")),
        weights_state_sha256=model.get("weights_state_sha256") or None,
        weights_source=source,
        weights_file=weights,
        seed=seed if isinstance(seed, int) else None,
        preprocessing=manifest.get("preprocessing")
        if isinstance(manifest.get("preprocessing"), dict)
        else None,
        reference_sha256=(manifest.get("reference") or {}).get("sha256")
        if isinstance(manifest.get("reference"), dict)
        else None,
        manifest=path.parent / "manifest.json",
    )


def _same_export(own: ArtifactRecord, other: ArtifactRecord, manifest: dict[str, Any]) -> bool:
    """Whether the manifest can describe the artifact: nothing both record differs."""
    if own.preset and other.preset and own.preset != other.preset:
        return False
    if own.model_args and other.model_args and own.model_args != other.model_args:
        return False
    if own.model_args is not None and isinstance(manifest.get("model"), dict):  # both record the weights
        return own.weights_state_sha256 == other.weights_state_sha256
    mine, theirs = own.weights_state_sha256, other.weights_state_sha256
    return not (mine and theirs and mine != theirs)


def artifact_record(
    path: str | Path,
    *,
    meta: Mapping[str, str] | None = None,
    sidecar: Mapping[str, Any] | None = None,
) -> ArtifactRecord:
    """What the artifact ``path`` (``.onnx``, or an engine with its sidecar) records about itself, completed
    from the ``manifest.json`` beside it when that does not contradict it. ``meta`` (an ONNX file's
    metadata) and ``sidecar`` (an engine's): when the caller has read them already."""
    path = Path(path)
    if path.suffix in ONNX_SUFFIXES:
        own = _from_metadata(path, meta if meta is not None else onnx_metadata(path))
    elif path.suffix in ENGINE_SUFFIXES:
        if sidecar is None:
            from deploykit.engine.runner import read_sidecar

            sidecar = read_sidecar(path)
        own = _from_sidecar(path, sidecar)
    else:
        raise ArtifactError(
            f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
        )
    manifest = _read_manifest(path)
    if manifest is None:
        return own
    other = _from_manifest(path, manifest)
    if not _same_export(own, other, manifest):
        return own
    return replace(
        own, **{f.name: getattr(other, f.name) for f in fields(own) if getattr(own, f.name) is None}
    )


# ----------------------------------------------------------------------------------------------- variant


@lru_cache(maxsize=8)
def _graph_variant(path: str, mtime_ns: int, size: int) -> str:
    from deploykit.core.artifacts import graph_variant
    from deploykit.core.onnx_io import read_onnx_graph

    return graph_variant(read_onnx_graph(path), path)


def onnx_file_variant(path: str | Path, meta: Mapping[str, str] | None = None) -> str | None:
    """``fp32``, ``fp16``, ``int8`` (Q/DQ, the TensorRT graph) or ``int8-cpu`` (ONNX Runtime's dynamic
    quantization) of an ONNX file: from its operators (a quantized graph carries the FP32 graph's metadata);
    without the onnx package (a device runtime) from the file name, else the ``deploykit.precision`` it
    records (``meta``: its metadata, when read already). None: unknown."""
    path = Path(path)
    try:
        import onnx  # noqa: F401

        stat = path.stat()
        return _graph_variant(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except (ImportError, ArtifactError):  # no onnx here, or a graph only the runtime reads
        pass
    named = onnx_variant(path)
    if meta is None:
        try:
            meta = onnx_metadata(path)
        except (ImportError, ArtifactError):
            meta = {}
    recorded = meta.get("deploykit.precision") or None
    return named if named in ("int8", "int8-cpu") or recorded is None else recorded


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
        meta = runner.session.get_modelmeta().custom_metadata_map
        record = artifact_record(path, meta=meta)
        variant = onnx_file_variant(path, meta)
        out_shape = runner.session.get_outputs()[0].shape
        max_batch = None  # the batch axis is dynamic
    elif path.suffix in ENGINE_SUFFIXES:
        from deploykit.engine.runner import TensorRTRunner, read_sidecar

        record = artifact_record(path, sidecar=read_sidecar(path))  # a bad sidecar: exit 2 before exit 3
        runner = TensorRTRunner(path)
        variant = getattr(runner, "precision", None)
        out_shape = runner.output_shape
        max_batch = runner.batch_range[1]
    else:
        raise ArtifactError(
            f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
        )
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
    names = labels if labels is not None else recorded_labels(record)
    return Predictor(runner, preprocessing, num_classes, names, max_batch, str(path), record, variant)


def recorded_labels(record: ArtifactRecord) -> tuple[str, ...] | None:
    """The class names ``record`` holds, each a one-line string (else a one-line ConfigError naming the
    artifact: an artifact written by another tool is refused, never misaligned); None: none recorded."""
    if record.labels is None:
        return None
    return check_labels(record.labels, f"{record.path}: its recorded labels")


def random_weights_warning(artifact: str | Path) -> str:
    """The one line ``deploykit predict`` prints for an artifact exported with random weights."""
    return (
        f"warning: {artifact} was exported with random weights (no --weights): its classes are meaningless; "
        "export with --weights CHECKPOINT for a model that predicts"
    )


def predict_command(
    artifact: str,
    images: Sequence[str],
    *,
    top_k: int = 5,
    labels: str | None = None,
    batch_size: int | None = None,
    json_out: str | None = None,
) -> None:
    """``deploykit predict``: classify ``images`` (files or folders) and print a table (and write JSON);
    one warning line on stderr when the artifact was exported with random weights."""
    import click
    from rich.console import Console
    from rich.table import Table

    from deploykit.core.io import atomic_write_text
    from deploykit.runtime.preprocess import expand_image_paths
    from deploykit.workflows.predict import load

    files = expand_image_paths(images)
    predictor = load(artifact, labels=labels)
    results = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    if predictor.random_weights:  # after the images were read: a bad input stays one error line
        click.echo(random_weights_warning(artifact), err=True)
    what = f", {predictor.variant}" if predictor.variant else ""
    table = Table(title=f"{artifact} ({predictor.runner.name}{what})")
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
