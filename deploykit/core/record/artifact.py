"""The record itself: :class:`ArtifactRecord`, read from and written to each of the three files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import Variant
from deploykit.core.labels import check_labels
from deploykit.core.record.keys import (
    KEY_EXPORTER,
    KEY_FAMILY,
    KEY_INPUT,
    KEY_LABELS,
    KEY_LINT,
    KEY_MODEL_ARGS,
    KEY_OPSET,
    KEY_PARITY,
    KEY_PRECISION,
    KEY_PREPROCESSING,
    KEY_PRESET,
    KEY_REFERENCE,
    KEY_REWRITES,
    KEY_TORCH,
    KEY_VERSION,
    KEY_WEIGHTS_STATE,
    MANIFEST_NAME,
    METADATA,
    WeightsSource,
)
from deploykit.core.schema import validate


@dataclass(frozen=True, kw_only=True)
class ArtifactRecord:
    """What an artifact records about the model it was exported from (``None``: not recorded). Read from
    the artifact itself (ONNX metadata, an engine's sidecar), completed from the ``manifest.json`` beside it
    when that describes the same export (:func:`artifact_record`); written by the export
    (:meth:`to_metadata`, :meth:`sidecar_fields`)."""

    path: Path | None = None
    preset: str | None = None
    family: str | None = None
    #: ``{"num_classes": N, "image_size": S, ...overrides}``; num_classes 0: headless (features)
    model_args: dict[str, Any] | None = None
    labels: tuple[str, ...] | None = None
    #: fingerprint of the exported weights' content (``deploykit.workflows.export.model.state_sha256``)
    weights_state_sha256: str | None = None
    weights_source: WeightsSource | None = None
    #: the manifest's record of the weights file: path, sha256 (of the file), format, ...
    weights_file: dict[str, Any] | None = None
    seed: int | None = None
    #: the preset's data_config as exported (input_size, mean, std, interpolation, crop_pct)
    preprocessing: dict[str, Any] | None = None
    #: sha256 of the golden reference (reference.npz) the export wrote beside it
    reference_sha256: str | None = None
    #: the variant the artifact says it is (its metadata, or an engine's sidecar)
    variant: Variant | None = None
    #: the manifest.json the record was completed from (None: none beside it, or another export's)
    manifest: Path | None = None
    # facts only the export writes (into the ONNX metadata)
    version: str | None = None
    input: dict[str, Any] | None = None
    rewrites: tuple[str, ...] = ()
    opset: int | None = None
    exporter: str | None = None
    torch: str | None = None
    parity: dict[str, Any] | None = None
    lint_violations: int | None = None

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
        if self.weights_state_sha256 or self.weights_file or self.weights_source in _REAL_WEIGHTS:
            return False
        return True if self.weights_source is WeightsSource.RANDOM else None

    def checked_labels(self) -> tuple[str, ...] | None:
        """The class names recorded, each a one-line string (else a one-line ConfigError naming the
        artifact: an artifact written by another tool is refused, never misaligned); None: none recorded."""
        if self.labels is None:
            return None
        return check_labels(self.labels, f"{self.path}: its recorded labels")

    def describe_args(self) -> str:
        args = self.model_args or {}
        return ", ".join(f"{k} {args[k]}" for k in ("num_classes", "image_size") if k in args) or "?"

    # -------------------------------------------------------------------------------------- write
    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` of an exported graph (the export fills every field it writes)."""
        meta = {
            KEY_VERSION: str(self.version),
            KEY_PRESET: str(self.preset),
            KEY_FAMILY: str(self.family),
            KEY_INPUT: json.dumps(self.input),
            KEY_PREPROCESSING: json.dumps(self.preprocessing),
            KEY_REWRITES: ",".join(self.rewrites),
            KEY_OPSET: str(self.opset),
            KEY_EXPORTER: str(self.exporter),
            KEY_TORCH: str(self.torch),
            KEY_MODEL_ARGS: json.dumps(self.model_args, sort_keys=True),
        }
        if self.weights_state_sha256 is not None:
            meta[KEY_WEIGHTS_STATE] = self.weights_state_sha256
        if self.labels is not None:
            meta[KEY_LABELS] = json.dumps(list(self.labels))
        meta[KEY_PRECISION] = str(self.variant)
        meta[KEY_PARITY] = json.dumps(self.parity)
        meta[KEY_LINT] = str(self.lint_violations)
        meta[KEY_REFERENCE] = str(self.reference_sha256)
        return meta

    def sidecar_fields(self) -> dict[str, Any]:
        """What an engine's sidecar records about the model (preset, classes, resolution, names, weights,
        reference, preprocessing), so ``deploykit predict`` and ``validate`` can run the engine alone."""
        return {
            "preprocessing": self.preprocessing,
            "preset": self.preset,
            "model_args": self.model_args,
            "labels": list(self.labels) if self.labels is not None else None,
            "weights_state_sha256": self.weights_state_sha256,
            "random_weights": self.random_weights if self.model_args is not None else None,
            "reference_sha256": self.reference_sha256,
        }

    # --------------------------------------------------------------------------------------- read
    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], path: str | Path) -> ArtifactRecord:
        """An ONNX file's record from its ``metadata_props`` (checked: :data:`METADATA`)."""
        present = {k: v for k, v in meta.items() if v != ""}
        record = validate(present, METADATA, path)
        args = _args(record.get(KEY_MODEL_ARGS))
        sha = record.get(KEY_WEIGHTS_STATE)
        return cls(
            path=Path(path),
            preset=record.get(KEY_PRESET),
            model_args=args,
            labels=_names(record.get(KEY_LABELS)),
            weights_state_sha256=sha,
            # an export that records its model args records the weights' hash whenever it had weights
            weights_source=WeightsSource.RANDOM if args is not None and sha is None else None,
            preprocessing=record.get(KEY_PREPROCESSING),
            reference_sha256=record.get(KEY_REFERENCE),
            variant=variant_named(record.get(KEY_PRECISION)),
        )

    @classmethod
    def from_onnx(cls, path: str | Path) -> ArtifactRecord:
        """The record of the ONNX file ``path`` (its metadata only: see :func:`artifact_record`)."""
        from deploykit.core.record.files import onnx_metadata

        return cls.from_metadata(onnx_metadata(path), path)

    @classmethod
    def from_sidecar(cls, sidecar: Mapping[str, Any], path: str | Path) -> ArtifactRecord:
        """An engine's record from its (checked) sidecar."""
        random = sidecar.get("random_weights")
        return cls(
            path=Path(path),
            preset=sidecar.get("preset"),
            model_args=_args(sidecar.get("model_args")),
            labels=_names(sidecar.get("labels")),
            weights_state_sha256=sidecar.get("weights_state_sha256") or None,
            weights_source=WeightsSource.RANDOM if random is True else None,
            preprocessing=sidecar.get("preprocessing") or None,
            reference_sha256=sidecar.get("reference_sha256") or None,
            variant=variant_named(sidecar.get("precision")) or Variant.FP32,
        )

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], path: str | Path) -> ArtifactRecord:
        """What a (checked) manifest records about the artifact ``path`` of its export."""
        model = manifest.get("model") or {}
        weights = manifest.get("weights")
        source = _weights_source(model.get("weights"))
        if source is None and weights is not None:
            source = WeightsSource.FILE
        elif source is None and manifest.get("random_weights") is True:
            source = WeightsSource.RANDOM
        seed = (manifest.get("export_config") or {}).get("seed")
        return cls(
            path=Path(path),
            preset=manifest.get("preset"),
            family=manifest.get("family"),
            model_args=_manifest_args(manifest),
            labels=_names(manifest.get("labels")),
            weights_state_sha256=model.get("weights_state_sha256") or None,
            weights_source=source,
            weights_file=weights,
            seed=seed,
            preprocessing=manifest.get("preprocessing"),
            reference_sha256=(manifest.get("reference") or {}).get("sha256"),
            manifest=Path(path).parent / MANIFEST_NAME,
        )

    def same_export(self, other: ArtifactRecord, *, both_record_weights: bool) -> bool:
        """Whether ``other`` (a manifest's record) can describe this artifact: nothing both record differs
        (the weights' hash included when both record the weights: an artifact that records its model args
        and a manifest with a ``model`` record each record the hash whenever there were weights)."""
        if self.preset and other.preset and self.preset != other.preset:
            return False
        if self.model_args and other.model_args and self.model_args != other.model_args:
            return False
        if self.model_args is not None and both_record_weights:
            return self.weights_state_sha256 == other.weights_state_sha256
        mine, theirs = self.weights_state_sha256, other.weights_state_sha256
        return not (mine and theirs and mine != theirs)

    def completed_by(self, other: ArtifactRecord) -> ArtifactRecord:
        """This record with ``other``'s value for every field it does not record."""
        missing = {f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None}
        return replace(self, **missing)


_REAL_WEIGHTS = (WeightsSource.FILE, WeightsSource.MEMORY)


def _weights_source(value: Any) -> WeightsSource | None:
    try:
        return WeightsSource(value) if value is not None else None
    except ValueError:
        return None


def variant_named(value: Any) -> Variant | None:
    try:
        return Variant(value) if value is not None else None
    except ValueError:
        return None


def _args(value: Any) -> dict[str, Any] | None:
    """Recorded model args: classes and resolution (ints) plus any architecture overrides."""
    if not isinstance(value, dict):
        return None
    sizes = {k: value[k] for k in ("num_classes", "image_size") if isinstance(value.get(k), int)}
    if not sizes:
        return None
    return {k: v for k, v in value.items() if k not in ("num_classes", "image_size")} | sizes


def _names(value: Any) -> tuple[str, ...] | None:
    """Recorded class names, as recorded: whoever uses them checks them (:mod:`deploykit.core.labels`),
    so a name that is not one line of text is refused there, never turned into another."""
    return tuple(value) if isinstance(value, list) and value else None


def _manifest_args(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The model args a manifest records (older manifests: from the I/O shapes)."""
    args = _args((manifest.get("model") or {}).get("model_args"))
    if args:
        return args
    try:
        (inp,), (out,) = manifest["io"]["inputs"], manifest["io"]["outputs"]
        return _args({"num_classes": out["shape"][-1], "image_size": inp["shape"][-1]})
    except (KeyError, TypeError, ValueError, IndexError):
        return None
