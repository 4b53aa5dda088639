"""Stage: the mixed-precision ONNX graph that a strongly typed TensorRT build (11.x always, 10.x with the
STRONGLY_TYPED flag) runs as FP16.

TensorRT 11 has no weak typing (no ``BuilderFlag.FP16``): the precision of every layer is the type of its
tensors in the ONNX graph. So "FP16" means this graph — FP16 weights and activations, with FP32 islands
where half precision breaks transformers — and its accuracy is checked here with ONNX Runtime.

FP32 islands come from two places, both listed in the report with the reason:

1. **Op types** known to be fragile in FP16 (:data:`FP32_OPS`): LayerNormalization (mean/variance
   reductions), Softmax (exp and row sums), explicit reductions and power/sqrt/exp.
2. **The sensitivity check** over the validation images:
   * *range*: every node whose FP32 activations reach :data:`OVERFLOW_LIMIT` (half of FP16's max
     finite value 65504) would overflow or saturate in FP16 and stays FP32;
   * *segments*: if the converted graph still misses the FP16 tolerances, the graph is cut into
     segments at each LayerNormalization (one transformer sub-block each), each segment's error is
     measured with only that segment in FP16, and the worst segments are kept FP32 until the tolerances
     hold.

The conversion itself is onnxconverter-common's ``convert_float_to_float16`` with a node block list.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx

from deploykit.validation.metrics import Tolerances

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
#: how many times the module check keeps the first drifting module FP32 before falling back to segments
MODULE_ROUNDS = 8
OVERFLOW_LIMIT = FP16_MAX / 2


@dataclass
class Fp16Report:
    kept_fp32: list[dict] = field(default_factory=list)  # {"node", "op", "reason"}
    fp16_nodes: int = 0
    total_nodes: int = 0
    segments_checked: int = 0
    modules_checked: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    logits: np.ndarray | None = None  # of the returned graph on the images (not serialized)
    range_images: int = 0

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


def activation_ranges(proto: onnx.ModelProto, images: np.ndarray, chunk: int = 8) -> dict[str, float]:
    """Max |x| of every float node output of the FP32 graph over ``images`` (ONNX Runtime, CPU).

    The reductions run inside the graph (an ``Abs -> ReduceMax`` per tensor, exposed as scalar outputs), so
    a run costs about one inference instead of copying every activation out of ONNX Runtime."""
    from deploykit.export.scopes import tensor_types
    from deploykit.runtime.ort_runner import OrtRunner

    types = tensor_types(proto)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    producer: dict[str, str] = {}
    for node in proto.graph.node:
        for out in node.output:
            if types.get(out) == onnx.TensorProto.FLOAT:
                producer[f"{out}__absmax"] = node.name
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
    peak: dict[str, float] = {}
    for i in range(0, len(images), chunk):
        outs = runner.session.run(None, {runner.input_name: images[i : i + chunk]})
        for name, value in zip(names, outs):
            if name in producer and value.size:
                peak[producer[name]] = max(peak.get(producer[name], 0.0), float(value))
    return peak


def convert(proto: onnx.ModelProto, block_nodes: set[str], fp16_io: bool = False) -> onnx.ModelProto:
    from onnxconverter_common import float16

    src = onnx.ModelProto()
    src.CopyFrom(proto)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = float16.convert_float_to_float16(
            src,
            keep_io_types=not fp16_io,
            op_block_list=list(FP32_OPS),
            node_block_list=sorted(block_nodes),
            max_finite_val=FP16_MAX,
            disable_shape_infer=False,
        )
    return out


def _module_check(
    fp32, converted, out, logits, passes, images, reference, tol, blocked, report, ops, fp16_io
):
    """Keep FP32 the nodes of the first module that drifts in FP16 from the FP32 graph, again and again,
    until the logits pass, no module drifts past the module tolerances, or :data:`MODULE_ROUNDS` is
    reached. Returns the last converted graph and its logits."""
    from deploykit.export.scopes import module_nodes
    from deploykit.validation.locate import locate_between_graphs, worst_images

    for _ in range(MODULE_ROUNDS):
        picked = images[worst_images(reference, out)]
        first = locate_between_graphs(fp32, converted, picked, tol, "fp16").first
        report.modules_checked += 1
        nodes = module_nodes(fp32, first.module) - blocked if first is not None else set()
        if not nodes:
            break
        blocked |= nodes
        reason = (
            f"module check: {first.module} drifts in FP16 (max rel {first.max_rel:.3g}, "
            f"cosine {first.cosine_min:.6f})"
        )
        report.kept_fp32.extend(
            {"node": n, "op": ops[n], "reason": reason} for n in sorted(nodes) if ops[n] not in FP32_OPS
        )
        converted = convert(fp32, blocked, fp16_io)
        out = logits(converted)
        if passes(out):
            break
    return converted, out


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
    passes,  # Callable[[np.ndarray], bool]: do these logits meet the FP16 tolerances?
    fp16_io: bool = False,
    max_batch: int = 16,
    tol: Tolerances | None = None,
    range_images: np.ndarray | None = None,
) -> tuple[onnx.ModelProto, Fp16Report]:
    """Convert ``proto`` (FP32, nodes named) to mixed precision, keeping FP32 what the checks require.

    With ``tol`` (the FP16 tolerances) a graph that misses them is first fixed module by module: the first
    module whose FP16 output drifts from the FP32 graph (``module_max_rel`` / ``module_min_cosine``, see
    :mod:`deploykit.validation.locate`) is kept FP32, up to :data:`MODULE_ROUNDS` times; segments after.
    The range check runs over ``range_images`` (default ``images``). ``report.logits`` holds the final
    graph's logits on ``images``."""
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.ort_runner import OrtRunner

    t = time.perf_counter()
    fp32 = onnx.ModelProto()
    fp32.CopyFrom(proto)
    _name_nodes(fp32)
    _unshare_initializers(fp32)
    report = Fp16Report(total_nodes=len(fp32.graph.node))
    t = report.lap("prepare", t)
    ops = {n.name: n.op_type for n in fp32.graph.node}
    for name, op in ops.items():
        if op in FP32_OPS:
            report.kept_fp32.append({"node": name, "op": op, "reason": FP32_OPS[op]})
    blocked: set[str] = set()
    range_images = images if range_images is None else range_images
    report.range_images = len(range_images)
    ranges = activation_ranges(fp32, range_images)
    t = report.lap("activation ranges", t)
    for name, peak in sorted(ranges.items()):
        if peak >= OVERFLOW_LIMIT and ops.get(name) not in FP32_OPS:
            blocked.add(name)
            report.kept_fp32.append(
                {
                    "node": name,
                    "op": ops[name],
                    "reason": f"range check: activations reach |x| = {peak:.4g} (FP16 max 65504)",
                }
            )

    def logits(model: onnx.ModelProto) -> np.ndarray:
        return run_batched(OrtRunner(model.SerializeToString()), images, max_batch)

    converted = convert(fp32, blocked, fp16_io)
    t = report.lap("convert", t)
    out = logits(converted)
    t = report.lap("onnxruntime fp16", t)
    if not passes(out) and tol is not None:
        converted, out = _module_check(
            fp32, converted, out, logits, passes, images, reference, tol, blocked, report, ops, fp16_io
        )
        t = report.lap("module check", t)
    if not passes(out):
        groups = segments(fp32)
        errors = []
        for i, group in enumerate(groups):
            others = {n for g in groups for n in g} - set(group)
            out = logits(convert(fp32, others | blocked, fp16_io))
            errors.append((float(np.abs(out - reference).max()), i))
        report.segments_checked = len(groups)
        for err, i in sorted(errors, reverse=True):
            blocked |= set(groups[i])
            for name in groups[i]:
                if ops[name] not in FP32_OPS:
                    report.kept_fp32.append(
                        {
                            "node": name,
                            "op": ops[name],
                            "reason": f"segment check: segment {i} alone in FP16 gives max abs "
                            f"logit error {err:.3g}",
                        }
                    )
            converted = convert(fp32, blocked, fp16_io)
            out = logits(converted)
            if passes(out):
                break
        t = report.lap("segment check", t)
    report.fp16_nodes = report.total_nodes - len({k["node"] for k in report.kept_fp32})
    report.logits = out
    onnx.checker.check_model(converted)
    report.lap("check model", t)
    return converted, report
