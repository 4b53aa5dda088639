"""Stage: the mixed-precision ONNX graph that a strongly typed TensorRT build (11.x always, 10.x with the
STRONGLY_TYPED flag) runs as FP16.

TensorRT 11 has no weak typing (no ``BuilderFlag.FP16``): the precision of every layer is the type of its
tensors in the ONNX graph. So "FP16" means this graph — FP16 weights and activations, with FP32 islands
where half precision breaks transformers — and its accuracy is checked here with ONNX Runtime.

FP32 islands come from two places, both listed in the report with the reason:

1. **Op types** known to be fragile in FP16 (:data:`FP32_OPS`): LayerNormalization (mean/variance
   reductions), Softmax (exp and row sums), explicit reductions and power/sqrt/exp.
2. **The sensitivity check** over the validation images:
   * *range*: every node that produces or reads FP32 activations reaching :data:`OVERFLOW_LIMIT` (half
     of FP16's max finite value 65504) would overflow or saturate in FP16 and stays FP32 (measured
     in-graph for computing ops, derived for data movement, see :func:`activation_ranges`). A PyTorch
     screen (:func:`torch_peak`) skips the measurement when no activation comes within
     :data:`SCREEN_MARGIN` of the limit;
   * *modules*: if the converted graph misses the FP16 tolerances, the first module drifting from the FP32
     graph is kept FP32 (up to :data:`MODULE_ROUNDS` times);
   * *segments*: if it still misses them, the graph is cut into segments at each LayerNormalization (one
     transformer sub-block each) and the higher-precision search INT8 uses too
     (:mod:`deploykit.transforms.precision_search`) keeps whole segments FP32: each segment's error
     measured with only that segment in FP16, worst first, until the tolerances hold.

The conversion itself (:func:`convert`) is onnxconverter-common's ``convert_float_to_float16`` with a node
block list, run with the FLOAT initializers emptied; :mod:`deploykit.transforms.fp16_weights` converts the
weights after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from deploykit.transforms.fp16_weights import convert_float_to_float16
from deploykit.transforms.precision_search import GateResult, keep_in_higher_precision, worst_first_later_ties
from deploykit.validation.metrics import Check, Tolerances

FP32_OPS: dict[str, str] = {
    "LayerNormalization": "mean/variance reductions lose precision and overflow in FP16",
    "Softmax": "exp() of attention scores and the row sums overflow / lose precision in FP16",
    "ReduceMean": "reduction over many elements accumulates error in FP16",
    "ReduceSum": "reduction over many elements accumulates error in FP16",
    "Pow": "squares overflow FP16's range",
    "Sqrt": "normalisation statistics need FP32",
    "Exp": "exp() overflows FP16 above ~11",
}
FP16_MAX = 65504.0
#: the range check's PyTorch screen passes when no activation comes within this factor of OVERFLOW_LIMIT
SCREEN_MARGIN = 8.0
#: how many times the module check keeps the first drifting module FP32 before falling back to segments
MODULE_ROUNDS = 8
OVERFLOW_LIMIT = FP16_MAX / 2
SCREEN_LIMIT = OVERFLOW_LIMIT / SCREEN_MARGIN


@dataclass(kw_only=True)
class Fp16Report:
    kept_fp32: list[dict] = field(default_factory=list)  # {"node", "op", "reason"}
    fp16_nodes: int = 0
    total_nodes: int = 0
    segments_checked: int = 0
    modules_checked: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # of the returned graph on the images (not serialized)
    gate: GateResult | None = None  # the returned graph's gate result (not serialized)
    range_images: int = 0
    range_tensors: int = 0  # tensors the range check measured (the others derived)
    range_screen: float | None = None  # PyTorch's max |x| over every op output, when the screen ran

    def lap(self, step: str, since: float) -> float:
        """Add the seconds since ``since`` to ``step``; returns now."""
        now = time.perf_counter()
        self.timings_s[step] = round(self.timings_s.get(step, 0.0) + now - since, 3)
        return now

    def to_dict(self) -> dict:
        return {
            "kept_fp32": self.kept_fp32,
            "fp16_nodes": self.fp16_nodes,
            "total_nodes": self.total_nodes,
            "segments_checked": self.segments_checked,
            "modules_checked": self.modules_checked,
            "range_images": self.range_images,
            "range_tensors": self.range_tensors,
            "range_screen": self.range_screen,
            "timings_s": self.timings_s,
        }


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Give every node a unique name (the block list addresses nodes by name)."""
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _unshare_initializers(proto: onnx.ModelProto) -> None:
    """Give every consumer of a shared initializer its own copy.

    onnxsim merges identical constants (e.g. an all-zero LayerNorm bias and an all-zero folded conv bias);
    when one consumer stays FP32 and the other becomes FP16, the converter would have to give one tensor two
    types and emits an invalid graph. Copies cost only the (small) shared tensors.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    seen: dict[str, int] = {}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__copy{seen[name] - 1}"
                proto.graph.initializer.append(copy)
                node.input[i] = copy.name


#: ops whose float output only moves, selects or repeats values of their float inputs (or shrinks them): max
#: |output| is at most the inputs' max |x|
MOVE_OPS = frozenset(
    {
        "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Expand", "Tile",
        "Concat", "Split", "Slice", "Gather", "GatherElements", "DepthToSpace", "SpaceToDepth", "MaxPool",
        "Relu", "Neg", "Abs",
    }
)  # fmt: skip
#: ops whose output is bounded by 1 whatever the input
BOUNDED_OPS = frozenset({"Sigmoid", "Softmax", "Tanh", "Erf", "Sin", "Cos"})
#: constants up to this many elements are read for the bounds of Mul / Div (scales, gates, GELU's 1.702)
SMALL_CONSTANT = 1024


def _small_constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {
        t.name: numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if int(np.prod(t.dims)) <= SMALL_CONSTANT and t.data_type == onnx.TensorProto.FLOAT
    }
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = node.attribute[0].t
            if int(np.prod(value.dims)) <= SMALL_CONSTANT and value.data_type == onnx.TensorProto.FLOAT:
                found[node.output[0]] = numpy_helper.to_array(value)
    return found


def _derived_bound(
    node: onnx.NodeProto, inputs: list[str], peak: dict[str, float], constants: dict[str, np.ndarray]
) -> float | None:
    """An upper bound of max |output| from the inputs' bounds, where it is tight enough to replace a
    measurement; None: measure it."""
    if node.op_type in BOUNDED_OPS:
        return 1.0
    known = [
        peak[i] if i in peak else float(np.abs(constants[i]).max()) if i in constants else None
        for i in inputs
    ]
    if not inputs or any(b is None for b in known):
        return None
    if node.op_type in MOVE_OPS:
        return max(known)
    # |a * b| <= max|a| * max|b|: tight when one factor is a constant or a gate bounded by 1
    if node.op_type == "Mul" and len(known) == 2 and (any(i in constants for i in inputs) or min(known) <= 1):
        return known[0] * known[1]
    if node.op_type == "Div" and len(inputs) == 2 and inputs[1] in constants:
        smallest = float(np.abs(constants[inputs[1]]).min())
        if smallest > 0:
            return known[0] / smallest
    return None


def activation_ranges(
    proto: onnx.ModelProto, images: np.ndarray, chunk: int = 2
) -> tuple[dict[str, float], int]:
    """Max |x| of every float tensor of the FP32 graph over ``images`` (ONNX Runtime, CPU): the graph input,
    and every node output. Returns them and how many were measured.

    Outputs of computing ops are measured inside the graph (an ``Abs -> ReduceMax`` per tensor, exposed as
    scalar outputs), so a run costs about one inference instead of copying every activation out of ONNX
    Runtime. Where an upper bound follows from the inputs' (:func:`_derived_bound`: data movement, ops
    bounded by 1, scaling by a constant or by a gate in [-1, 1]) it is used instead: fewer exposed tensors
    leave ONNX Runtime its fusions (e.g. QuickGelu), which keeps the run close to a plain inference. Runs
    ``chunk`` images at a time (a small chunk keeps the activations in cache; docs/measured.md)."""
    from deploykit.core.scopes import tensor_types
    from deploykit.runtime.ort_runner import OrtRunner

    types = tensor_types(proto)
    constants = _small_constants(proto)
    graph_input = proto.graph.input[0].name
    peak: dict[str, float] = {graph_input: float(np.abs(images).max())} if len(images) else {}
    derived: list[tuple[onnx.NodeProto, list[str]]] = []
    planned = dict(peak)  # bounds known before the run: measured tensors are inf until then
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    measured: dict[str, str] = {}  # probe output -> tensor
    for node in proto.graph.node:
        floats = [o for o in node.output if o and types.get(o) == onnx.TensorProto.FLOAT]
        if not floats or node.op_type == "Constant":
            continue
        inputs = [i for i in node.input if i and types.get(i) == onnx.TensorProto.FLOAT]
        bound = _derived_bound(node, inputs, planned, constants)
        planned.update(dict.fromkeys(floats, float("inf") if bound is None else bound))
        if bound is not None:
            derived.append((node, inputs))
            continue
        for out in floats:
            measured[f"{out}__absmax"] = out
            probe.graph.node.extend(
                [
                    onnx.helper.make_node("Abs", [out], [f"{out}__abs"]),
                    onnx.helper.make_node("ReduceMax", [f"{out}__abs"], [f"{out}__absmax"], keepdims=0),
                ]
            )
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(f"{out}__absmax", onnx.TensorProto.FLOAT, [])
            )
    runner = OrtRunner(probe.SerializeToString())
    names = [o.name for o in runner.session.get_outputs()]
    for i in range(0, len(images), chunk):
        outs = runner.session.run(None, {runner.input_name: images[i : i + chunk]})
        for name, value in zip(names, outs):
            if name in measured and value.size:
                tensor = measured[name]
                peak[tensor] = max(peak.get(tensor, 0.0), float(value))
    for node, inputs in derived:  # topological order: the inputs' ranges are known
        bound = _derived_bound(node, inputs, peak, constants)
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT:
                peak[out] = bound
    return peak, len(measured)


def torch_peak(model, images: np.ndarray, batch: int = 2) -> float:
    """Max |x| over the inputs and every floating-point op output of ``model``'s forward passes on ``images``
    (a ``TorchDispatchMode`` sees each ATen op: the matmuls, adds, activations and normalisations the ONNX
    graph is made of) — the range check's screen, see :func:`make_fp16`."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Peak(TorchDispatchMode):
        value = 0.0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    low, high = torch.aminmax(t)
                    self.value = max(self.value, -float(low), float(high))
            return out

    peak = Peak()
    with torch.inference_mode(), peak:
        for i in range(0, len(images), batch):
            model(torch.from_numpy(np.ascontiguousarray(images[i : i + batch], dtype=np.float32)))
    return max(peak.value, float(np.abs(images).max()) if len(images) else 0.0)


def range_blocks(proto: onnx.ModelProto, peaks: dict[str, float]) -> list[dict]:
    """The nodes the range check keeps FP32, with the reason: every node that produces or reads a tensor
    reaching :data:`OVERFLOW_LIMIT` (a kept producer's output is cast back to FP16 for an FP16 consumer,
    so the consumers must stay FP32 too). Op types of :data:`FP32_OPS` are FP32 anyway and not listed."""
    kept: dict[str, dict] = {}
    for node in proto.graph.node:
        if node.op_type in FP32_OPS:
            continue
        for name in node.output:
            if peaks.get(name, 0.0) >= OVERFLOW_LIMIT:
                reason = f"range check: activations reach |x| = {peaks[name]:.4g} (FP16 max 65504)"
                kept.setdefault(node.name, {"node": node.name, "op": node.op_type, "reason": reason})
        for name in node.input:
            if peaks.get(name, 0.0) >= OVERFLOW_LIMIT:
                reason = f"range check: input {name} reaches |x| = {peaks[name]:.4g} (FP16 max 65504)"
                kept.setdefault(node.name, {"node": node.name, "op": node.op_type, "reason": reason})
    return list(kept.values())


def convert(proto: onnx.ModelProto, block_nodes: Collection[str], fp16_io: bool = False) -> onnx.ModelProto:
    """``proto`` in FP16 but for :data:`FP32_OPS` and ``block_nodes``, FP32 graph I/O unless ``fp16_io``
    (:func:`deploykit.transforms.fp16_weights.convert_float_to_float16`)."""
    return convert_float_to_float16(
        proto, op_block_list=FP32_OPS, block_nodes=block_nodes, max_finite_val=FP16_MAX, fp16_io=fp16_io
    )


#: what :func:`make_fp16`'s gate returns for logits: the Check records they were gated by, or a plain verdict
Verdict = bool | Iterable[Check]


def gate_result(logits: np.ndarray, verdict: Verdict) -> GateResult:
    """``logits`` with their gate's verdict as Check records; a plain bool becomes one record (metric
    ``passes``: 1 passed, 0 failed)."""
    if isinstance(verdict, (bool, np.bool_)):
        value = 1.0 if verdict else 0.0
        checks = (Check(output="logits", metric="passes", value=value, threshold=1.0, passed=bool(verdict)),)
    else:
        checks = tuple(verdict)
    return GateResult(checks=checks, logits=logits)


@dataclass(kw_only=True)
class _Conversion:
    """One FP16 conversion in progress: the named FP32 graph, the images and reference logits it is
    checked on, what is kept FP32 so far (``blocked``) and the report being written."""

    fp32: onnx.ModelProto
    images: np.ndarray
    reference: np.ndarray
    verdict: Callable[[np.ndarray], Verdict]
    fp16_io: bool
    max_batch: int
    report: Fp16Report
    ops: dict[str, str]
    blocked: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, proto: onnx.ModelProto, **checked: Any) -> _Conversion:
        """The conversion of ``proto`` (its named copy, report and ops: :func:`_prepare`) on ``checked``."""
        fp32, report, ops = _prepare(proto)
        return cls(fp32=fp32, report=report, ops=ops, **checked)

    def build(self, kept: Collection[str]) -> onnx.ModelProto:
        """The graph with ``kept`` (node names) FP32, besides the op types that always are."""
        return convert(self.fp32, kept, self.fp16_io)

    def logits(self, model: onnx.ModelProto) -> np.ndarray:
        from deploykit.runtime.base import run_batched
        from deploykit.runtime.ort_runner import OrtRunner

        return run_batched(OrtRunner(model.SerializeToString()), self.images, self.max_batch)

    def gate(self, model: onnx.ModelProto) -> GateResult:
        """The FP16 gate on ``model``: its logits on the images and their verdict."""
        logits = self.logits(model)
        return gate_result(logits, self.verdict(logits))

    def damage(self, model: onnx.ModelProto) -> float:
        """The segment check's metric: the max abs error of ``model``'s logits against the reference."""
        return float(np.abs(self.logits(model) - self.reference).max())

    def keep(self, nodes, reason: str) -> None:
        """Record ``nodes`` as kept FP32 for ``reason`` (ops that are always FP32 are listed once)."""
        self.report.kept_fp32.extend(
            {"node": n, "op": self.ops[n], "reason": reason} for n in nodes if self.ops[n] not in FP32_OPS
        )


def _module_check(run: _Conversion, converted: onnx.ModelProto, found: GateResult, tol: Tolerances):
    """Keep FP32 the nodes of the first module that drifts in FP16 from the FP32 graph, again and again,
    until the gate passes, no module drifts past the module tolerances, or :data:`MODULE_ROUNDS` is
    reached. Returns the last converted graph and its gate result."""
    from deploykit.core.scopes import module_nodes
    from deploykit.validation.locate import locate_between_graphs, worst_images

    for _ in range(MODULE_ROUNDS):
        picked = run.images[worst_images(run.reference, found.logits)]
        first = locate_between_graphs(run.fp32, converted, picked, tol, "fp16").first
        run.report.modules_checked += 1
        nodes = module_nodes(run.fp32, first.module) - run.blocked if first is not None else set()
        if not nodes:
            break
        run.blocked |= nodes
        reason = (
            f"module check: {first.module} drifts in FP16 (max rel {first.max_rel:.3g}, "
            f"cosine {first.cosine_min:.6f})"
        )
        run.keep(sorted(nodes), reason)
        converted = run.build(run.blocked)
        found = run.gate(converted)
        if found.passed:
            break
    return converted, found


def _segment_check(run: _Conversion, converted: onnx.ModelProto, found: GateResult):
    """The shared higher-precision search over the segments
    (:func:`~deploykit.transforms.precision_search.keep_in_higher_precision`): each segment's max abs logit
    error alone in FP16 (the rest FP32), then whole segments kept FP32, worst first (ties: the later
    segment), until the gate passes. Returns the last converted graph and its gate result."""
    groups = {f"segment {i}": group for i, group in enumerate(segments(run.fp32))}
    search = keep_in_higher_precision(
        groups,
        build=run.build,
        damage=run.damage,
        gate=run.gate,
        reason=lambda group, err: f"segment check: {group} alone in FP16 gives max abs logit error {err:.3g}",
        order=worst_first_later_ties,
        kept=frozenset(run.blocked),
    )
    run.report.segments_checked = len(groups)
    for kept in search.kept:
        run.blocked.update(kept.nodes)
        run.keep(kept.nodes, kept.reason)
    if search.graph is None or search.gate is None:  # no segment
        return converted, found
    return search.graph, search.gate


def _prepare(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Report, dict[str, str]]:
    """A named, unshared copy of ``proto``, a report listing the ops that are always FP32, and the op of
    every node."""
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(proto)
    _name_nodes(fp32)
    _unshare_initializers(fp32)
    report = Fp16Report(total_nodes=len(fp32.graph.node))
    ops = {n.name: n.op_type for n in fp32.graph.node}
    for name, op in ops.items():
        if op in FP32_OPS:
            report.kept_fp32.append({"node": name, "op": op, "reason": FP32_OPS[op]})
    return fp32, report, ops


def segments(proto: onnx.ModelProto) -> list[list[str]]:
    """Contiguous node groups, each starting at a LayerNormalization (topological order)."""
    groups: list[list[str]] = [[]]
    for node in proto.graph.node:
        if node.op_type == "LayerNormalization" and groups[-1]:
            groups.append([])
        groups[-1].append(node.name)
    return [g for g in groups if g]


def make_fp16(
    proto: onnx.ModelProto,
    images: np.ndarray,
    reference: np.ndarray,
    gate: Callable[[np.ndarray], Verdict],
    *,
    fp16_io: bool = False,
    max_batch: int = 16,
    tol: Tolerances | None = None,
    range_images: np.ndarray | None = None,
    range_screen: float | None = None,
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert ``proto`` (FP32, nodes named) to mixed precision, keeping FP32 what the checks require;
    ``gate(logits)`` gives the Check records of logits against the FP16 tolerances (or a plain bool).

    With ``tol`` (the FP16 tolerances) a graph that misses them is first fixed module by module: the first
    module whose FP16 output drifts from the FP32 graph (``module_max_rel`` / ``module_min_cosine``, see
    :mod:`deploykit.validation.locate`) is kept FP32, up to :data:`MODULE_ROUNDS` times; segments after.
    The range check runs over ``range_images`` (default ``images``), unless ``range_screen`` — the
    PyTorch model's max |x| over every op output on those images (:func:`torch_peak`) — stays below
    :data:`SCREEN_LIMIT`: no activation within :data:`SCREEN_MARGIN` of the overflow limit, so no node to
    keep FP32 (the margin covers the few ONNX intermediates PyTorch's ops do not show, such as a matmul
    before its bias or GELU's decomposition, which stay within a small factor of what they show).
    ``report.logits`` holds the final graph's logits on ``images``, ``report.gate`` their gate result."""
    t = time.perf_counter()
    run = _Conversion.start(
        proto, images=images, reference=reference, verdict=gate, fp16_io=fp16_io, max_batch=max_batch
    )
    fp32, report = run.fp32, run.report
    t = report.lap("prepare", t)
    range_images = images if range_images is None else range_images
    report.range_images = len(range_images)
    report.range_screen = range_screen
    if range_screen is None or range_screen >= SCREEN_LIMIT:
        peaks, report.range_tensors = activation_ranges(fp32, range_images)
        t = report.lap("activation ranges", t)
        for kept in range_blocks(fp32, peaks):
            run.blocked.add(kept["node"])
            report.kept_fp32.append(kept)
    converted = run.build(run.blocked)
    t = report.lap("convert", t)
    found = run.gate(converted)
    t = report.lap("onnxruntime fp16", t)
    if not found.passed and tol is not None:
        converted, found = _module_check(run, converted, found, tol)
        t = report.lap("module check", t)
    if not found.passed:
        converted, found = _segment_check(run, converted, found)
        t = report.lap("segment check", t)
    report.fp16_nodes = report.total_nodes - len({k["node"] for k in report.kept_fp32})
    report.logits, report.gate = found.logits, found
    onnx.checker.check_model(converted)
    report.lap("check model", t)
    return converted, report
