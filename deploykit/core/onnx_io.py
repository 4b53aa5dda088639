"""ONNX files in and out, with one error type: load (checked), serialize (deterministic bytes), the I/O
signature and node attributes. Imports onnx, never torch. (An exported graph's metadata is the artifact
record's: :mod:`deploykit.core.record`.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from deploykit.core.errors import ArtifactError, ExportError, first_line


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


def node_attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of attribute ``name`` of ``node`` (strings decoded), else ``default``."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default
