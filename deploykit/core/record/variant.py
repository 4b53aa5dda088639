"""Which graph or engine an artifact is: :func:`variant_of`, the one answer every reader uses."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import ENGINE_SUFFIXES, Variant, quantized_variant
from deploykit.core.errors import ArtifactError
from deploykit.core.record.artifact import variant_named
from deploykit.core.record.files import metadata_of, onnx_metadata, read_sidecar
from deploykit.core.record.keys import KEY_PRECISION


def _weights_variant(proto: Any) -> Variant:
    import onnx

    half = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return Variant.FP16 if half > len(proto.graph.initializer) / 2 else Variant.FP32


def _graph_variant(proto: Any, path: str | Path | None = None) -> Variant:
    """The variant of an ``onnx.ModelProto``: its quantization operators first (a quantized graph may keep
    the FP32 graph's metadata), else the variant it records, else what most of its weights are."""
    from deploykit.core.artifacts import graph_op_types

    quantized = quantized_variant(graph_op_types(proto))
    if quantized is not None:
        return quantized
    recorded = variant_named(metadata_of(proto).get(KEY_PRECISION))
    if recorded is None:
        return _weights_variant(proto)
    if recorded in (Variant.FP32, Variant.FP16):
        return recorded
    # it records an INT8 variant but has no quantization operators: its name, else what it records
    return (Variant.from_file_name(path) if path is not None else None) or recorded


@lru_cache(maxsize=8)
def _file_variant(path: str, mtime_ns: int, size: int) -> Variant:
    from deploykit.core.onnx_io import read_onnx_graph

    return _graph_variant(read_onnx_graph(path), path)


def variant_of(
    path: str | Path | None = None,
    *,
    proto: Any = None,
    meta: Mapping[str, str] | None = None,
    sidecar: Mapping[str, Any] | None = None,
) -> Variant | None:
    """Which graph or engine an artifact is — the one answer every reader uses. An engine: its sidecar's
    precision (FP32 when it says nothing). An ONNX graph (``proto``, or the file ``path``): its operators
    decide INT8 (Q/DQ: :attr:`Variant.INT8`; ONNX Runtime's integer kernels: :attr:`Variant.INT8_CPU`),
    else the variant it records, else its weights' type. Without the onnx package (a device): the file
    name's INT8 variants, else the recorded variant (``meta``, or read through ONNX Runtime), else the
    file name. None: unknown."""
    if proto is not None:
        return _graph_variant(proto, path)
    path = Path(str(path))
    if path.suffix in ENGINE_SUFFIXES:
        return variant_named((sidecar if sidecar is not None else read_sidecar(path)).get("precision")) or (
            Variant.FP32
        )
    try:
        import onnx  # noqa: F401

        stat = path.stat()
        return _file_variant(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except (ImportError, OSError, ArtifactError):  # no onnx here, or a graph only the runtime reads
        pass
    named = Variant.from_file_name(path)
    if meta is None:
        try:
            meta = onnx_metadata(path)
        except (ImportError, ArtifactError):
            meta = {}
    recorded = variant_named(meta.get(KEY_PRECISION))
    if named in (Variant.INT8, Variant.INT8_CPU) or recorded is None:
        return named
    return recorded
