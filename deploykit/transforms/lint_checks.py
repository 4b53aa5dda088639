"""The checks an operator's entry of the TensorRT ONNX-parser table (``trt_operators.json``) lists.

Each check of an entry is ``{"kind": ..., ...}``, the parameters of one restriction of the table (or of
TensorRT's Quantize/Dequantize reference: the Q/DQ checks). :data:`CHECKS` maps each kind to a generator
of ``(rule, message)`` pairs, called by :func:`deploykit.transforms.lint.lint_model` with the node, the
check and the graph's facts (element types, ranks, sizes, constant values). The rules are listed in
:mod:`deploykit.transforms.lint`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from deploykit.core.onnx_io import node_attribute

# ONNX element types -> the type names the table uses. TensorRT's FP8 is E4M3, so only FLOAT8E4M3FN maps
# to "FP8"; every other type keeps its ONNX name (e.g. "FLOAT8E5M2", "INT16") and so is never in a list.
# No ONNX type maps to the table's "TF32" (a math mode for FP32 tensors, not an element type).
_TABLE_DTYPE_NAMES = {
    "FLOAT": "FP32",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "DOUBLE": "FP64",
    "FLOAT8E4M3FN": "FP8",
    "FLOAT4E2M1": "FP4",
}


def dtype_name(elem_type: int) -> str:
    """An ONNX ``TensorProto`` element type in the table's spelling (``FLOAT`` -> ``FP32``)."""
    onnx_name = TensorProto.DataType.Name(elem_type)
    return _TABLE_DTYPE_NAMES.get(onnx_name, onnx_name)


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _check_pool_rank(node, check, graph):
    kernel = node_attribute(node, "kernel_shape")
    if kernel is not None:
        rank, what = len(kernel), f"kernel_shape {list(kernel)}"
    else:  # kernel_shape is required by the spec; fall back on the input's rank
        input_rank = graph.ranks.get(_input(node, 0))
        rank, what = (input_rank - 2 if input_rank else None), "the input"
    if rank is not None and rank not in check["ranks"]:
        yield "pool-rank", f"2D or 3D pooling only: {what} is {rank}-D"


def _check_dilations(node, check, graph):
    dilations = node_attribute(node, "dilations")
    if dilations and any(d != 1 for d in dilations):
        yield "dilations", f"`dilations` must be empty or all ones, got {list(dilations)}"


def _check_max_outputs(node, check, graph):
    used = [o for o in node.output[check["count"] :] if o]
    if used:
        yield "extra-output", f"{check['what']} unsupported, but output `{used[0]}` is used"


def _check_const_input(node, check, graph):
    tensor = _input(node, check["index"])
    if not tensor:
        return
    if check["level"] == "initializer":
        if not graph.is_weight(tensor):
            yield (
                "const-input",
                f"`{check['name']}` must be an initializer, but `{tensor}` is computed at run time",
            )
            return
    elif tensor not in graph.build_time:
        yield "const-input", f"`{check['name']}` must be a build-time constant, but `{tensor}` is not"
        return
    if "value" in check:
        value = graph.value(tensor)
        if value is not None and bool(np.any(value)) != check["value"]:
            yield "const-input", f"`{check['name']}` must evaluate to {check['value']}"


def _check_attr_in(node, check, graph):
    value = node_attribute(node, check["attr"], check["default"])
    if value not in check["allowed"]:
        allowed = ", ".join(str(a) for a in check["allowed"])
        yield "attr-value", f"`{check['attr']}`={value!r} is unsupported (supported: {allowed})"


def _check_attr_absent(node, check, graph):
    for attr in node.attribute:
        if attr.name in check["attrs"]:
            yield "attr-value", f"`{attr.name}` attribute is unsupported"


def _check_zero_input(node, check, graph):
    tensor = _input(node, check["index"])
    if not tensor:
        return  # absent: zero
    if tensor not in graph.build_time:
        yield (
            "zero-point",
            f"`{check['name']}` must be a constant zero, but `{tensor}` is computed at run time",
        )
        return
    value = graph.value(tensor)
    if value is not None and np.any(value.astype(np.float64) != 0):
        yield "zero-point", f"`{check['name']}` must be zero"


def _check_input_dtype(node, check, graph):
    tensor = _input(node, check["index"])
    elem_type = graph.elem_types.get(tensor) if tensor else None
    if elem_type and dtype_name(elem_type) not in check["dtypes"]:
        yield "dtype", f"`{check['name']}` must be {'/'.join(check['dtypes'])}, got {dtype_name(elem_type)}"


# ------------------------------------------------------------------------------- explicit quantization
def _quantized_tensor(node: onnx.NodeProto) -> str:
    """The int8 (FP8/INT4/...) side of a Q/DQ node: Q's output ``y``, DQ's input ``x``."""
    return node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]


def _scale_rank(node, check, graph) -> int | None:
    """The rank of the node's constant scale (``None`` when it is computed: ``scale-const`` reports that)."""
    scale = _input(node, check["index"])
    return len(graph.dims[scale]) if scale and graph.is_weight(scale) and scale in graph.dims else None


def _per_channel(node, check, graph) -> bool:
    """A 1-D scale of more than one value (one value scales every element alike: per-tensor in effect)."""
    return _scale_rank(node, check, graph) == 1 and graph.dims[_input(node, check["index"])] != [1]


def _check_qdq_dtype(node, check, graph):
    tensor = _quantized_tensor(node)
    elem_type = graph.elem_types.get(tensor) if tensor else None
    if elem_type is None and node.op_type == "QuantizeLinear":  # no shape inference: the zero point's type
        elem_type = graph.elem_types.get(_input(node, 2))
    if elem_type and dtype_name(elem_type) not in check["dtypes"]:
        yield (
            "dtype",
            f"`{tensor}` is {dtype_name(elem_type)}; TensorRT quantizes to {', '.join(check['dtypes'])}",
        )


def _check_scale_const(node, check, graph):
    scale = _input(node, check["index"])
    if scale and not graph.is_weight(scale):
        yield "scale-const", f"`{check['name']}` must be a constant, but `{scale}` is computed at run time"


def _check_scale_dtype(node, check, graph):
    scale = _input(node, check["index"])
    elem_type = graph.elem_types.get(scale) if scale else None
    if not elem_type:
        return
    got = dtype_name(elem_type)
    if got not in check["dtypes"]:
        yield "scale-dtype", f"`{check['name']}` is {got}; TensorRT scales are {', '.join(check['dtypes'])}"
        return
    need = check.get("min_opset", {}).get(got)
    if need is not None and graph.opset is not None and graph.opset < need:
        yield (
            "scale-dtype",
            f"`{check['name']}` is {got}, which needs opset {need} or newer, not {graph.opset}",
        )


def _check_scale_shape(node, check, graph):
    rank = _scale_rank(node, check, graph)
    if rank is None or rank == 0 or (rank == 1 and not _per_channel(node, check, graph)):
        return  # computed (scale-const), scalar or one value: per-tensor
    name, scale = check["name"], _input(node, check["index"])
    if rank == 1:
        if graph.opset is not None and graph.opset < 13:
            yield "scale-shape", f"per-channel `{name}` needs opset 13 or newer (model: {graph.opset})"
            return
        dims = graph.dims.get(node.input[0])
        axis = node_attribute(node, "axis", 1)
        if dims is None or not -len(dims) <= axis < len(dims):
            return  # unknown rank, or qdq-axis
        size, count = dims[axis], graph.dims[scale][0]
        if size and count != size:
            yield (
                "scale-shape",
                f"per-channel `{name}` has {count} values, but axis {axis} of `{node.input[0]}` has {size}",
            )
        return
    quantized = graph.elem_types.get(_quantized_tensor(node))
    if rank == 2 and (quantized is None or dtype_name(quantized) in check["block_dtypes"]):
        return  # block quantization
    yield (
        "scale-shape",
        f"`{name}` is {rank}-D: TensorRT takes a scalar (per-tensor), 1-D (per-channel) or, for "
        f"{'/'.join(check['block_dtypes'])} only, 2-D (block) scale",
    )


def _check_qdq_axis(node, check, graph):
    if not _per_channel(node, check, graph):
        return  # ONNX ignores `axis` for per-tensor scales
    dims = graph.dims.get(node.input[0])
    axis = node_attribute(node, "axis", 1)
    if dims is not None and not -len(dims) <= axis < len(dims):
        yield "qdq-axis", f"`axis`={axis} is outside [{-len(dims)}, {len(dims) - 1}] for `{node.input[0]}`"


#: the table's check kinds (an entry's ``checks``: ``{"kind": ..., ...}``) -> their check
CHECKS = {
    "pool_rank": _check_pool_rank,
    "dilations_ones": _check_dilations,
    "max_outputs": _check_max_outputs,
    "const_input": _check_const_input,
    "attr_in": _check_attr_in,
    "attr_absent": _check_attr_absent,
    "zero_input": _check_zero_input,
    "input_dtype": _check_input_dtype,
    "qdq_dtype": _check_qdq_dtype,
    "scale_const": _check_scale_const,
    "scale_dtype": _check_scale_dtype,
    "scale_shape": _check_scale_shape,
    "qdq_axis": _check_qdq_axis,
}
