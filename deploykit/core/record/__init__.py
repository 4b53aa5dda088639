"""The artifact record: what an exported artifact says about itself, written once and read the same way
everywhere.

Three files carry it — an ONNX file's ``metadata_props`` (``deploykit.*`` keys, :meth:`ArtifactRecord.
to_metadata`), an engine's sidecar (``model.engine.json``) and the export's ``manifest.json`` — and this
package is the only one that spells their keys or parses them (``tests/test_architecture.py`` checks that).
Every reader (validate, predict, bench, build, triton, serve, doctor) goes through :func:`artifact_record`,
and through :func:`variant_of` for "which graph or engine is this" (:class:`Variant`). The record's
fields are checked against a schema (:mod:`deploykit.core.schema`) before use: a field of the wrong kind is
one :class:`~deploykit.core.errors.ArtifactError` line.

Imports neither onnx nor a runtime at import time: a device with only ONNX Runtime reads records too.
"""

from deploykit.core.record.artifact import ArtifactRecord
from deploykit.core.record.files import (
    ExportManifest,
    artifact_record,
    listed_artifacts,
    manifest_path,
    metadata_of,
    onnx_metadata,
    read_export_manifest,
    read_manifest,
    read_sidecar,
    session_metadata,
    sidecar_path_for,
    write_manifest_text,
    write_metadata,
    write_sidecar,
)
from deploykit.core.record.keys import *  # noqa: F403  (the keys, file names and schemas)
from deploykit.core.record.keys import METADATA_KEYS, WeightsSource
from deploykit.core.record.target import EngineTarget, HardwareCompatibility
from deploykit.core.record.variant import variant_of

__all__ = [
    "METADATA_KEYS",
    "ArtifactRecord",
    "EngineTarget",
    "ExportManifest",
    "HardwareCompatibility",
    "WeightsSource",
    "artifact_record",
    "listed_artifacts",
    "manifest_path",
    "metadata_of",
    "onnx_metadata",
    "read_export_manifest",
    "read_manifest",
    "read_sidecar",
    "session_metadata",
    "sidecar_path_for",
    "variant_of",
    "write_manifest_text",
    "write_metadata",
    "write_sidecar",
]
