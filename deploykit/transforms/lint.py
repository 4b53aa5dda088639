"""TensorRT-parser lint: check an ONNX graph against onnx-tensorrt's operator support matrix, without a GPU.

The matrix is data, not code: ``trt_operators.json`` next to this file is a transcription of a TensorRT ONNX
parser operator table whose coverage matches onnx-tensorrt's ``docs/operators.md`` (which TensorRT version and
opset range it documents, and where it came from, are recorded in the file). Every rule below is grounded in a
column or a restriction of that table, except ``no-einsum``, which is a deploykit project rule, and the
explicit-quantization rules of QuantizeLinear/DequantizeLinear beyond the table's zero point (``scale-*``,
``qdq-axis`` and the quantized type), which read TensorRT's own Quantize/Dequantize operator reference
(recorded in the file's ``quantization_source``): TensorRT builds a Q/DQ graph strongly typed, with no
calibrator, only when every Q/DQ pair is symmetric with constant scales.

Rules (``Violation.rule``):

- ``opset-range``    the model's default-domain opset is outside the range the table documents
- ``unsupported-op`` the table lists the operator as unsupported
- ``unknown-op``     a default-domain operator the table does not list
- ``custom-op``      an operator in a non-default domain (the table lists none; it would need a plugin)
- ``dtype``          the operator's data tensor has an element type outside the table's type list (for
                     QuantizeLinear also its quantized output: INT8, FP8, FP4 or INT4, never UINT8)
- ``pool-rank``      "2D or 3D pooling only" and the pooling window is not 2-D or 3-D
- ``dilations``      "`dilations` must be empty or all ones"
- ``extra-output``   an output the table says is unsupported (MaxPool ``Indices``, LayerNormalization)
- ``const-input``    "`axes` must be an initializer" and the like, when that input is computed at run time
- ``attr-value``     an attribute value outside the values the table lists (Resize modes, TopK ``sorted``, ...)
- ``zero-point``     a quantization zero point the table requires to be zero is not, or is not constant
- ``scale-const``    a Q/DQ scale is computed at run time; TensorRT needs a constant (initializer or Constant)
- ``scale-dtype``    a Q/DQ scale is not FP32/FP16/BF16, or is FP16/BF16 below opset 19
- ``scale-shape``    a Q/DQ scale is neither a scalar (per-tensor) nor 1-D with one value per channel of the
                     ``axis`` dimension (per-channel); 2-D (block) scales only for INT4
- ``qdq-axis``       the ``axis`` of a per-channel Q/DQ is outside the input's rank
- ``no-einsum``      deploykit rule: exported graphs carry no Einsum

Only ``onnx`` and ``numpy`` are imported, so the lint runs where torch and TensorRT are absent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, numpy_helper

from deploykit.core.onnx_io import node_attribute, read_onnx_graph

TABLE_PATH = Path(__file__).with_name("trt_operators.json")
DEFAULT_DOMAINS = ("", "ai.onnx")
EINSUM_MESSAGE = "Einsum: rewrite as MatMul (TensorRT Einsum support is limited)"
MODEL_NODE = "<model>"

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
# Explicit quantization: their data tensor is input 0 (see _data_tensors) and their quantized side is typed
# by the `qdq_dtype` check.
_QDQ = ("QuantizeLinear", "DequantizeLinear")
# Outputs of these are never build-time constants, even when every input is.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
}


@dataclass(frozen=True)
class Violation:
    node: str
    op_type: str
    rule: str
    message: str


@dataclass
class LintReport:
    violations: list[Violation] = field(default_factory=list)
    tensorrt_version: str = ""
    opset: int | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def rules(self) -> set[str]:
        return {v.rule for v in self.violations}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tensorrt_version": self.tensorrt_version,
            "opset": self.opset,
            "violations": [asdict(v) for v in self.violations],
        }


@cache
def load_table() -> dict[str, Any]:
    """The transcribed operator table (``trt_operators.json``), parsed once."""
    return json.loads(TABLE_PATH.read_text())


def dtype_name(elem_type: int) -> str:
    """An ONNX ``TensorProto`` element type in the table's spelling (``FLOAT`` -> ``FP32``)."""
    onnx_name = TensorProto.DataType.Name(elem_type)
    return _TABLE_DTYPE_NAMES.get(onnx_name, onnx_name)


def lint_model(model: onnx.ModelProto | str | Path) -> LintReport:
    """Check ``model`` against the TensorRT ONNX-parser operator table; never needs a GPU or TensorRT."""
    proto = _load(model)
    table = load_table()
    if proto.functions:
        # TensorRT inlines model-local functions; lint what it will parse.
        proto = onnx.inliner.inline_local_functions(proto)
    opset = _default_opset(proto)
    report = LintReport(tensorrt_version=table["tensorrt_version"], opset=opset)
    lo, hi = table["opset_range"]["min"], table["opset_range"]["max"]
    targets = {k: v["max"] for k, v in table.get("opset_by_target", {}).items() if isinstance(v, dict)}
    oldest = min(targets, key=targets.get) if targets else None
    if opset is not None and not lo <= opset <= hi:
        report.violations.append(
            Violation(
                MODEL_NODE,
                "opset_import",
                "opset-range",
                f"default-domain opset {opset} is outside the opset {lo}-{hi} range "
                f"TensorRT {table['tensorrt_version']} documents",
            )
        )
    elif opset is not None and oldest is not None and opset > targets[oldest]:
        report.violations.append(
            Violation(
                MODEL_NODE,
                "opset_import",
                "opset-range",
                f"default-domain opset {opset} is above opset {targets[oldest]}, the highest TensorRT "
                f"{oldest}'s parser documents (deploykit targets TensorRT 10.3+ and 11.x)",
            )
        )
    graph = _GraphFacts(_infer_shapes(proto).graph, opset)
    for index, node in enumerate(graph.nodes):
        report.violations.extend(_lint_node(node, index, graph, table, opset))
    return report


def format_report(report: LintReport) -> str:
    """One line per violation: ``node_name (OpType): message [rule]``."""
    return "\n".join(f"{v.node} ({v.op_type}): {v.message} [{v.rule}]" for v in report.violations)


# --------------------------------------------------------------------------------------------- loading


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    # Weights are not needed to lint; external data stays on disk (its values count as unknown).
    return read_onnx_graph(model)


def _default_opset(proto: onnx.ModelProto) -> int | None:
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    return max(versions) if versions else None


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return proto  # element types stay unknown where the exporter did not record them


class _GraphFacts:
    """What the rules need to know about tensors: element types, constness and constant values.

    Nodes of subgraphs (If/Loop/Scan bodies) are included; names are assumed unique across scopes, as
    ONNX requires for names visible from a subgraph.
    """

    def __init__(self, graph: onnx.GraphProto, opset: int | None = None):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.elem_types: dict[str, int] = {}
        self.ranks: dict[str, int] = {}
        self.dims: dict[str, list[int | None]] = {}  # sizes of value infos and weights (None: symbolic)
        self.values: dict[str, TensorProto] = {}  # initializers and Constant outputs: TensorRT weights
        self.build_time: set[str] = set()  # weights plus anything computed only from weights
        self._walk(graph)

    def _walk(self, graph: onnx.GraphProto) -> None:
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            tensor_type = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tensor_type is not None and tensor_type.elem_type:
                self.elem_types[vi.name] = tensor_type.elem_type
            if tensor_type is not None and tensor_type.HasField("shape"):
                self.ranks[vi.name] = len(tensor_type.shape.dim)
                self.dims[vi.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
                ]
        for init in graph.initializer:
            self.elem_types[init.name] = init.data_type
            self.values[init.name] = init
            self.dims[init.name] = list(init.dims)
            self.build_time.add(init.name)
        for node in graph.node:
            self.nodes.append(node)
            if node.domain in DEFAULT_DOMAINS and node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.values[node.output[0]] = attr.t
                        self.dims[node.output[0]] = list(attr.t.dims)
                self.build_time.add(node.output[0])
            elif (
                node.domain in DEFAULT_DOMAINS
                and node.op_type not in _NONDETERMINISTIC
                and any(node.input)
                and all(name in self.build_time for name in node.input if name)
            ):
                self.build_time.update(name for name in node.output if name)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        self._walk(g)

    def is_weight(self, name: str) -> bool:
        return name in self.values

    def value(self, name: str) -> np.ndarray | None:
        tensor = self.values.get(name)
        if tensor is None or tensor.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(tensor)


# ----------------------------------------------------------------------------------------------- rules


def _lint_node(
    node: onnx.NodeProto, index: int, graph: _GraphFacts, table: dict[str, Any], opset: int | None
) -> list[Violation]:
    name = node.name or f"<{node.op_type} #{index}>"

    def violation(rule: str, message: str) -> Violation:
        return Violation(name, node.op_type, rule, message)

    if node.domain not in DEFAULT_DOMAINS:
        return [
            violation(
                "custom-op",
                f"custom op {node.domain}::{node.op_type} is not in the TensorRT operator table "
                "(it needs a TensorRT plugin)",
            )
        ]
    version = table["tensorrt_version"]
    out = [violation("no-einsum", EINSUM_MESSAGE)] if node.op_type == "Einsum" else []
    entry = table["operators"].get(node.op_type)
    if entry is None:
        return [
            *out,
            violation("unknown-op", f"{node.op_type} is not in the TensorRT {version} operator table"),
        ]
    if not entry["supported"]:
        note = f" ({entry['restrictions']})" if entry["restrictions"] else ""
        return [
            *out,
            violation(
                "unsupported-op", f"{node.op_type} is not supported by the TensorRT {version} parser{note}"
            ),
        ]
    out.extend(violation("dtype", msg) for msg in _check_types(node, entry, graph, opset))
    for check in entry.get("checks", []):
        out.extend(violation(rule, msg) for rule, msg in _CHECKS[check["kind"]](node, check, graph))
    return out


def _check_types(node: onnx.NodeProto, entry: dict[str, Any], graph: _GraphFacts, opset: int | None):
    allowed = entry["types"]
    for tensor in _data_tensors(node, opset):
        elem_type = graph.elem_types.get(tensor)
        if not elem_type:
            continue
        got = dtype_name(elem_type)
        if got not in allowed:
            yield f"`{tensor}` is {got}; TensorRT supports {node.op_type} on {', '.join(allowed)}"
            return


def _data_tensors(node: onnx.NodeProto, opset: int | None) -> list[str]:
    """The tensors whose element type the table's type column describes.

    That is the input carrying the same type constraint as the node's first output (``X`` of Softmax,
    ``data`` of Gather, ``X`` of Where rather than its BOOL condition), falling back to the first input.
    Side inputs with their own constraint (Reshape ``shape``, Resize ``sizes``, Dropout ``training_mode``)
    are not checked. Cast is checked on both sides; source ops (Constant) on their output.
    """
    if not any(node.input):
        return [node.output[0]] if node.output else []
    if node.op_type in _QDQ:
        # the table types the data input: Q's float ``x``, DQ's quantized ``x`` (its scale and zero point
        # share a type constraint with the output, so the schema rule below would pick those instead)
        return [node.input[0]]
    if node.op_type in ("Cast", "CastLike"):
        return [node.input[0], node.output[0]]
    try:
        schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), node.domain)
    except onnx.defs.SchemaError:
        return [node.input[0]]
    out_type = schema.outputs[0].type_str if schema.outputs else None
    for i, formal in enumerate(schema.inputs):
        if formal.type_str == out_type and i < len(node.input) and node.input[i]:
            return [node.input[i]]
    return [node.input[0]]


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


_CHECKS = {
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
