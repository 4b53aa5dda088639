"""The model's FLOPs, counted on the export's ONNX graph: no PyTorch needed, so a device counts them too.

Every MatMul, Gemm and Conv node is counted at 2 FLOPs per multiply-add, with the shapes ONNX shape
inference gives at batch 1 — the operations ``torch.utils.flop_counter`` counts on the eager model (matmul,
linear, convolution; attention is MatMuls in the graph): the same total for four families, and for ConViT
what the graph still computes — its export folds the projection of the fixed relative positions into a
constant, 0.03 % of convit_tiny's FLOPs (``tests/test_bench.py`` checks both). Normalisation, softmax,
activations, pooling and elementwise ops are not counted, by either."""

from __future__ import annotations

from pathlib import Path

from deploykit.core.artifacts import Variant

#: what ``gflop_per_image`` counts (the bench JSON's ``model.flops_counted``)
FLOPS_COUNTED = (
    "MatMul, Gemm and Conv FLOPs (2 per multiply-add) of one image through the export's ONNX graph "
    "(model.onnx), shapes from ONNX shape inference at batch 1 (what torch.utils.flop_counter counts on the "
    "eager model, less what the export folded into constants); normalisation, softmax, activations, pooling "
    "and other elementwise ops are not counted"
)
#: ops whose cost this count does not know: a graph holding one has no FLOP count (never a wrong one)
_UNCOUNTED = {"Einsum", "Attention", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "ConvInteger"}


def graph_flops(directory: Path) -> int | None:
    """FLOPs of one image through the export's FP32 graph (else its FP16 graph) in ``directory``; None when
    it has neither (an engine copied alone) or a counted node's shapes stay unknown."""
    for variant in (Variant.FP32, Variant.FP16):
        path = directory / variant.file
        if path.is_file():
            return onnx_flops(path)
    return None


def onnx_flops(path: str | Path) -> int | None:
    """FLOPs of one image through the ONNX graph ``path`` (see the module docstring), or None."""
    import numpy as np
    import onnx
    from onnx import shape_inference

    try:
        proto = onnx.load(str(path))
        for value in (*proto.graph.input, *proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1  # the batch axis: one image
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # an unreadable graph or failed inference: the FLOPs stay unknown
        return None
    graph = inferred.graph
    shapes = {init.name: [int(d) for d in init.dims] for init in graph.initializer}
    for value in (*graph.value_info, *graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    total = 0
    for node in graph.node:
        if node.op_type in _UNCOUNTED:
            return None
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not a or not b or not out or None in (*a, *b, *out):
            return None
        outputs = int(np.prod(out))
        if node.op_type == "Conv":  # weight (C_out, C_in / groups, kh, kw): C_in / groups * kh * kw each
            total += 2 * outputs * int(np.prod(b[1:]))
            continue
        trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
        total += 2 * outputs * (a[0] if node.op_type == "Gemm" and trans_a else a[-1])
    return total
