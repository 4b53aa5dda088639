"""Artifact kinds by file name (ONNX graphs and TensorRT engines), the variants of an export's graphs
(:class:`Variant`: FP32, FP16, INT8 Q/DQ for TensorRT, INT8 for ONNX Runtime's CPU) and the numeric
precisions (:class:`Precision`). Which variant a given artifact is: :func:`deploykit.core.record.variant_of`,
the one answer every reader uses."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class Named(str, Enum):
    """A closed set of names that reads, prints and serializes as its plain value (``"fp16"``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Precision(Named):
    """The numeric precision an artifact is checked at (its tolerances: ``[tolerances.<precision>]``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Variant(Named):
    """Which of an export's graphs (or an engine built from it) an artifact is."""

    FP32 = "fp32"
    FP16 = "fp16"  # FP16 with FP32 islands
    INT8 = "int8"  # explicit Q/DQ on the FP16 graph: what TensorRT builds an INT8 engine from
    INT8_CPU = "int8-cpu"  # ONNX Runtime dynamic quantization of the FP32 graph (CPU)

    @property
    def precision(self) -> Precision:
        """``int8`` for both INT8 variants, else the variant itself."""
        return Precision.INT8 if self in (Variant.INT8, Variant.INT8_CPU) else Precision(self.value)

    @property
    def qdq(self) -> bool:
        """The explicitly quantized graph (Q/DQ pairs) TensorRT builds INT8 layers from."""
        return self is Variant.INT8

    @property
    def file(self) -> str:
        """Its file name in an export directory."""
        return _FILES[self]

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @classmethod
    def from_file_name(cls, path: str | Path) -> Variant | None:
        """The variant a file's name says it holds: ``model.onnx`` FP32, ``*.fp16.onnx``, ``*.int8.onnx``
        (Q/DQ), ``*.int8.cpu.onnx``; ``None`` for any other name."""
        name = Path(path).name
        for variant, file in _FILES.items():
            if name == file:
                return variant
        for suffix, variant in (
            (".int8.cpu.onnx", cls.INT8_CPU),
            (".int8.onnx", cls.INT8),
            (".fp16.onnx", cls.FP16),
        ):
            if name.endswith(suffix):
                return variant
        return None


_FILES = {
    Variant.FP32: "model.onnx",
    Variant.FP16: "model.fp16.onnx",
    Variant.INT8: "model.int8.onnx",
    Variant.INT8_CPU: "model.int8.cpu.onnx",
}
_DESCRIPTIONS = {
    Variant.FP32: "FP32",
    Variant.FP16: "FP16 with FP32 islands",
    Variant.INT8: "INT8 Q/DQ, the TensorRT graph",
    Variant.INT8_CPU: "INT8 dynamic quantization, ONNX Runtime CPU",
}
#: explicit quantization: what TensorRT reads as INT8 layers
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: ONNX Runtime's integer kernels (dynamic quantization, QOperator format); ``QLinear*`` counts too
ORT_INT8_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeLSTM",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
    }
)


def artifact_kind(path: str | Path) -> str | None:
    """``onnx``, ``engine`` or ``None`` (unknown) from the file's suffix."""
    suffix = Path(path).suffix
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    return "engine" if suffix in ENGINE_SUFFIXES else None


def unknown_kind_message(path: str | Path) -> str:
    return f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"


def quantized_variant(op_types: Iterable[str]) -> Variant | None:
    """:attr:`Variant.INT8_CPU` when the operators include ONNX Runtime's integer kernels
    (``DynamicQuantizeLinear``, ``MatMulInteger``, ``ConvInteger``, ``QLinear*``, ...),
    :attr:`Variant.INT8` when they include ``QuantizeLinear``/``DequantizeLinear`` (explicit Q/DQ), else
    ``None`` (not quantized)."""
    ops = set(op_types)
    if ops & ORT_INT8_OPS or any(op.startswith("QLinear") for op in ops):
        return Variant.INT8_CPU
    return Variant.INT8 if ops & QDQ_OPS else None


def graph_op_types(proto: Any) -> set[str]:
    """Every operator type of an ``onnx.ModelProto``: its graph, subgraphs and local functions."""
    ops: set[str] = set()
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    for function in proto.functions:
        ops.update(node.op_type for node in function.node)
    return ops
