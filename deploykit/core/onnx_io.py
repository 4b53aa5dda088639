"""ONNX files in and out, with one error type: load (checked), serialize (deterministic bytes), metadata,
the I/O signature and the precision of a graph. Imports onnx, never torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from deploykit.core.errors import ArtifactError, ExportError, first_line

#: metadata key of the precision deploykit writes into every graph it exports
PRECISION_KEY = "deploykit.precision"


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The model in ``path``, with its weights, checked by onnx's checker (:class:`ArtifactError` if not)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a valid ONNX model: {first_line(exc)}") from None
    return proto


def read_onnx_graph(path: str | Path) -> onnx.ModelProto:
    """The graph in ``path`` without external weights and without onnx's checker, for reading its I/O and
    metadata only (the runtime or TensorRT's parser checks the graph when it loads it); one error type,
    :class:`ArtifactError`, as :func:`load_onnx`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX file: {first_line(exc)}") from None


def serialize(proto: onnx.ModelProto) -> bytes:
    """One self-contained file (protobuf limit: 2 GB; every preset here is far below it)."""
    data = proto.SerializeToString(deterministic=True)
    if len(data) >= 2**31:
        raise ExportError("model exceeds the 2 GB single-file ONNX limit")
    return data


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` with ``metadata`` (sorted keys: deterministic bytes)."""
    del proto.metadata_props[:]
    for key in sorted(metadata):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(metadata[key])


def io_signature(proto: onnx.ModelProto) -> dict[str, Any]:
    """``{"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}``; a symbolic dim is its name."""

    def desc(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        return {
            "name": v.name,
            "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }

    return {"inputs": [desc(v) for v in proto.graph.input], "outputs": [desc(v) for v in proto.graph.output]}


def onnx_precision(proto: onnx.ModelProto) -> str:
    """``int8`` for an explicitly quantized graph (QuantizeLinear/DequantizeLinear nodes, whatever its
    metadata says: TensorRT builds their int8 layers strongly typed), else ``fp16`` when the graph says so
    (deploykit metadata) or most weights are half precision, else ``fp32``."""
    qdq = ("QuantizeLinear", "DequantizeLinear")
    nodes = [*proto.graph.node, *(n for f in proto.functions for n in f.node)]
    if any(n.op_type in qdq and n.domain in ("", "ai.onnx") for n in nodes):
        return "int8"
    meta = {p.key: p.value for p in proto.metadata_props}
    if PRECISION_KEY in meta:
        return meta[PRECISION_KEY]
    half = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return "fp16" if half > len(proto.graph.initializer) / 2 else "fp32"


def node_attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (strings decoded), else ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default
