"""The three files that carry a record, read and written only here: an ONNX file's metadata, an engine's
sidecar and an export's ``manifest.json``; and :func:`artifact_record`, what an artifact says about itself."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES, Variant, unknown_kind_message
from deploykit.core.config import MAX_BATCH
from deploykit.core.errors import ArtifactError
from deploykit.core.io import atomic_write_text
from deploykit.core.record.artifact import ArtifactRecord
from deploykit.core.record.keys import MANIFEST, MANIFEST_NAME, SIDECAR, SIDECAR_SUFFIX
from deploykit.core.schema import read_json, validate


def metadata_of(proto: Any) -> dict[str, str]:
    """The ``metadata_props`` of an ``onnx.ModelProto`` as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def write_metadata(proto: Any, metadata: Mapping[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``metadata`` (sorted keys: deterministic bytes)."""
    del proto.metadata_props[:]
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(metadata[key])


@lru_cache(maxsize=8)
def _onnx_metadata(path: str, mtime_ns: int, size: int) -> dict[str, str]:
    from deploykit.core.onnx_io import read_onnx_graph

    return metadata_of(read_onnx_graph(path))


def _ort_metadata(path: Path) -> dict[str, str]:
    """The metadata through ONNX Runtime (a device without the onnx package)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise ArtifactError(f"{path} is not a readable ONNX file: {exc}"[:300]) from None
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (read once per version of the file; with the onnx package,
    else through ONNX Runtime)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        return _ort_metadata(path)
    stat = path.stat()
    return dict(_onnx_metadata(str(path.resolve()), stat.st_mtime_ns, stat.st_size))


def session_metadata(session: Any) -> dict[str, str]:
    """The metadata of a loaded ONNX Runtime session's model."""
    return dict(session.get_modelmeta().custom_metadata_map)


def sidecar_path_for(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: str | Path, sidecar: Mapping[str, Any]) -> Path:
    """Write an engine's sidecar beside it (atomically); its path."""
    path = sidecar_path_for(engine_path)
    atomic_write_text(path, json.dumps(sidecar, indent=2) + "\n")
    return path


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The engine's sidecar JSON, ``{}`` when there is none. One that is there is checked against
    :data:`SIDECAR` before anything reads it: unreadable, not JSON, or a field of the wrong kind is one
    :class:`ArtifactError` line (exit 2), whether or not TensorRT is installed here."""
    path = sidecar_path_for(engine_path)
    try:
        data = read_json(path, "an engine sidecar")
    except FileNotFoundError:
        return {}
    return validate(data, SIDECAR, path)


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of an export directory (None: there is none), checked against
    :data:`MANIFEST`: one that is not JSON, not an object, or whose fields deploykit reads are of the wrong
    kind is one :class:`ArtifactError` line (exit 2), never silently ignored."""
    file = manifest_path(directory)
    try:
        manifest = read_json(file, "a deploykit manifest")
    except FileNotFoundError:
        return None
    return validate(manifest, MANIFEST, file)


@dataclass(frozen=True, kw_only=True)
class ExportManifest:
    """What an export directory's ``manifest.json`` says about the export as a whole (serving, bench)."""

    directory: Path
    preset: str
    input_name: str
    output_name: str
    input_dtype: str
    #: the I/O shapes without the batch axis: (C, H, W) and (N,)
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    #: the batch profile: {"min", "opt", "max"}
    batch: dict[str, int]
    preprocessing: dict[str, Any]
    #: file name -> {"sha256", "bytes"} of every file the export wrote
    artifacts: dict[str, dict[str, Any]]
    #: the FP16 graph takes and returns FP16 (``--fp16-io``)
    fp16_io: bool
    record: ArtifactRecord


def read_export_manifest(directory: str | Path) -> ExportManifest:
    """The manifest of the export directory ``directory``, whole: a missing folder or manifest, or one
    without a (batch, C, H, W) -> (batch, N) signature, a batch profile and the artifacts' hashes, is one
    :class:`ArtifactError` line."""
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"export directory not found: {path}")
    manifest = read_manifest(path)
    if manifest is None:
        raise ArtifactError(f"{path} has no {MANIFEST_NAME} (not a deploykit export directory?)")
    where = manifest_path(path)
    io = manifest.get("io") or {}
    inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
    batch = (manifest.get("export_config") or {}).get("batch")
    needs = (manifest.get("preset"), batch, manifest.get("artifacts"), manifest.get("preprocessing"))
    if len(inputs) != 1 or len(outputs) != 1 or any(v is None for v in needs):
        raise ArtifactError(
            f"{where} is not a readable deploykit manifest (it needs preset, one input and one output in "
            "io, export_config.batch, artifacts and preprocessing)"
        )
    (inp,), (out,) = inputs, outputs
    in_dims, out_dims = tuple(inp["shape"][1:]), tuple(out["shape"][1:])
    dims = [*in_dims, *out_dims]
    if len(in_dims) != 3 or len(out_dims) != 1 or not all(isinstance(d, int) and d >= 1 for d in dims):
        raise ArtifactError(
            f"{where} is not a readable deploykit manifest (input {inp['shape']} / output {out['shape']} "
            "is not (batch, C, H, W) -> (batch, N))"
        )
    if not (batch["min"] <= batch["opt"] <= batch["max"] <= MAX_BATCH):
        raise ArtifactError(
            f"{where}: export_config.batch must be min <= opt <= max <= {MAX_BATCH}, got {batch}"
        )
    return ExportManifest(
        directory=path,
        preset=manifest["preset"],
        input_name=inp["name"],
        output_name=out["name"],
        input_dtype=str(inp.get("dtype") or "float"),
        input_dims=in_dims,
        output_dims=out_dims,
        batch={k: batch[k] for k in ("min", "opt", "max")},
        preprocessing=dict(manifest.get("preprocessing") or {}),
        artifacts=dict(manifest.get("artifacts") or {}),
        fp16_io=(manifest.get("fp16") or {}).get("io") == "fp16",
        record=ArtifactRecord.from_manifest(manifest, path / Variant.FP32.file),
    )


def listed_artifacts(directory: str | Path) -> set[str]:
    """The plain file names a previous export's manifest lists (none when it is missing or unreadable)."""
    try:
        manifest = read_manifest(directory)
    except ArtifactError:
        return set()
    names = (manifest or {}).get("artifacts") or {}
    return {n for n in names if "/" not in n and n not in ("", ".", "..")}


def write_manifest_text(manifest: Mapping[str, Any]) -> str:
    """``manifest.json``'s text."""
    return json.dumps(manifest, indent=2) + "\n"


def artifact_record(
    path: str | Path, *, meta: Mapping[str, str] | None = None, sidecar: Mapping[str, Any] | None = None
) -> ArtifactRecord:
    """What the artifact ``path`` (``.onnx``, or an engine with its sidecar) records about itself, completed
    from the ``manifest.json`` beside it when that does not contradict it. ``meta`` (an ONNX file's
    metadata) and ``sidecar`` (an engine's): when the caller has read them already."""
    path = Path(path)
    if path.suffix in ONNX_SUFFIXES:
        own = ArtifactRecord.from_metadata(meta if meta is not None else onnx_metadata(path), path)
    elif path.suffix in ENGINE_SUFFIXES:
        own = ArtifactRecord.from_sidecar(sidecar if sidecar is not None else read_sidecar(path), path)
    else:
        raise ArtifactError(unknown_kind_message(path))
    manifest = read_manifest(path.parent)
    if manifest is None:
        return own
    other = ArtifactRecord.from_manifest(manifest, path)
    if not own.same_export(other, both_record_weights=manifest.get("model") is not None):
        return own
    return own.completed_by(replace(other, variant=None))
