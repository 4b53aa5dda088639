"""Artifact kinds by file name: ONNX graphs and TensorRT engines; and the variants of an export's ONNX
graphs (FP32, FP16, INT8 Q/DQ for TensorRT, INT8 for ONNX Runtime's CPU), by file name or by the graph's
operators."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

#: the ONNX files of an export directory -> the variant each holds
ONNX_VARIANTS = {
    "model.onnx": "fp32",
    "model.fp16.onnx": "fp16",
    "model.int8.onnx": "int8",  # explicit Q/DQ on the FP16 graph: what TensorRT builds an INT8 engine from
    "model.int8.cpu.onnx": "int8-cpu",  # ONNX Runtime dynamic quantization of the FP32 graph (CPU)
}
#: variant -> its file name in an export directory
VARIANT_FILES = {variant: name for name, variant in ONNX_VARIANTS.items()}
#: variant -> what it is, in a few words (tables, messages)
VARIANT_DESCRIPTIONS = {
    "fp32": "FP32",
    "fp16": "FP16 with FP32 islands",
    "int8": "INT8 Q/DQ, the TensorRT graph",
    "int8-cpu": "INT8 dynamic quantization, ONNX Runtime CPU",
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


def onnx_variant(path: str | Path) -> str | None:
    """The variant an ONNX file's name says it holds: ``fp32`` (``model.onnx``), ``fp16`` (``*.fp16.onnx``),
    ``int8`` (``*.int8.onnx``: Q/DQ, for TensorRT), ``int8-cpu`` (``*.int8.cpu.onnx``: ONNX Runtime's
    dynamic quantization); ``None`` for any other name."""
    name = Path(path).name
    if name in ONNX_VARIANTS:
        return ONNX_VARIANTS[name]
    for suffix, variant in ((".int8.cpu.onnx", "int8-cpu"), (".int8.onnx", "int8"), (".fp16.onnx", "fp16")):
        if name.endswith(suffix):
            return variant
    return None


def quantized_variant(op_types: Iterable[str]) -> str | None:
    """``int8-cpu`` when the operators include ONNX Runtime's integer kernels (``DynamicQuantizeLinear``,
    ``MatMulInteger``, ``ConvInteger``, ``DynamicQuantizeMatMul``, ``QLinear*``, ...), ``int8`` when they
    include ``QuantizeLinear``/``DequantizeLinear`` (explicit Q/DQ), else ``None`` (not quantized)."""
    ops = set(op_types)
    if ops & ORT_INT8_OPS or any(op.startswith("QLinear") for op in ops):
        return "int8-cpu"
    return "int8" if ops & QDQ_OPS else None


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


def graph_variant(proto: Any, path: str | Path | None = None) -> str:
    """The variant of an ONNX graph: its quantization operators decide ``int8`` / ``int8-cpu`` first (a
    quantized graph keeps the FP32 graph's metadata, ``deploykit.precision`` included, so the metadata
    cannot be trusted for it); else the precision the graph records or its weights show (``fp16`` /
    ``fp32``); the file name (``path``) only where the graph says nothing else."""
    from deploykit.core.onnx_io import onnx_precision

    quantized = quantized_variant(graph_op_types(proto))
    if quantized:
        return quantized
    precision = onnx_precision(proto)
    if precision in ("fp32", "fp16"):
        return precision
    return (onnx_variant(path) if path is not None else None) or precision


def variant_precision(variant: str) -> str:
    """The numeric precision of a variant: ``int8`` for both INT8 graphs, else the variant itself."""
    return "int8" if variant.startswith("int8") else variant
