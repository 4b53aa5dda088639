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

The restrictions an operator's entry lists as ``checks`` are in :mod:`deploykit.transforms.lint_checks`.
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

from deploykit.core.onnx_io import read_onnx_graph
from deploykit.transforms.lint_checks import CHECKS, dtype_name

TABLE_PATH = Path(__file__).with_name("trt_operators.json")
DEFAULT_DOMAINS = ("", "ai.onnx")
EINSUM_MESSAGE = "Einsum: rewrite as MatMul (TensorRT Einsum support is limited)"
MODEL_NODE = "<model>"

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


@dataclass(frozen=True, kw_only=True)
class Violation:
    node: str
    op_type: str
    rule: str
    message: str


@dataclass(kw_only=True)
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
                node=MODEL_NODE,
                op_type="opset_import",
                rule="opset-range",
                message=f"default-domain opset {opset} is outside the opset {lo}-{hi} range "
                f"TensorRT {table['tensorrt_version']} documents",
            )
        )
    elif opset is not None and oldest is not None and opset > targets[oldest]:
        report.violations.append(
            Violation(
                node=MODEL_NODE,
                op_type="opset_import",
                rule="opset-range",
                message=f"default-domain opset {opset} is above opset {targets[oldest]}, the highest TensorRT "
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
        return Violation(node=name, op_type=node.op_type, rule=rule, message=message)

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
        out.extend(violation(rule, msg) for rule, msg in CHECKS[check["kind"]](node, check, graph))
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
