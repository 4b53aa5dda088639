"""The gated INT8 transforms, graph -> graph: :func:`quantize_qdq` (the TensorRT Q/DQ graph of the FP16
graph) and :func:`quantize_cpu` (ONNX Runtime's dynamic INT8 of the FP32 graph) build the graph with every
transformer block quantized and gate it (:class:`Int8Gate`: parity against the FP32 reference logits and,
with labelled images, the accuracy drop). A graph that fails goes through the higher-precision search FP16
uses too (:func:`~deploykit.transforms.precision_search.keep_in_higher_precision`): each block's damage
(1 - the worst per-sample cosine) measured with only that block quantized, then whole blocks kept in
higher precision - Model Optimizer's advice for ViTs - worst first until the gate passes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import onnx

from deploykit.core.config import Tolerances
from deploykit.core.onnx_io import serialize
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms.int8 import make_cpu_int8, make_qdq
from deploykit.transforms.precision_search import GateResult, keep_in_higher_precision
from deploykit.validation.metrics import ParityResult, accuracy_check, compare_outputs, sample_cosine

#: what the record says when even keeping every block in higher precision leaves the gate failing
SEARCH_FAILED = "INT8 fails its gate even with every block kept in higher precision"


@dataclass(frozen=True, kw_only=True)
class Int8Gate:
    """The INT8 graphs' gate: parity of ``output`` against the FP32 ``reference`` logits on ``images``
    (run ``batch`` at a time) within ``tolerances`` and, given ``labels``, the accuracy drop."""

    images: np.ndarray
    reference: np.ndarray
    tolerances: Tolerances
    labels: np.ndarray | None = None
    output: str = "logits"
    batch: int = 8

    @property
    def fp32_accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return float((self.reference.argmax(1) == self.labels).mean())

    def logits(self, proto: onnx.ModelProto) -> np.ndarray:
        return run_batched(OrtRunner(serialize(proto)), self.images, self.batch)

    def parity(self, logits: np.ndarray) -> ParityResult:
        return compare_outputs({self.output: self.reference}, {self.output: logits}, self.tolerances, "int8")

    def accuracy(self, logits: np.ndarray) -> float | None:
        return None if self.labels is None else float((logits.argmax(1) == self.labels).mean())

    def __call__(self, proto: onnx.ModelProto) -> GateResult:
        logits = self.logits(proto)
        checks = list(self.parity(logits).checks)
        accuracy = self.accuracy(logits)
        if accuracy is not None:
            drop = self.tolerances.max_accuracy_drop
            checks.append(accuracy_check(self.output, self.fp32_accuracy, accuracy, drop, len(logits)))
        return GateResult(checks=tuple(checks), logits=logits)

    def damage(self, proto: onnx.ModelProto) -> float:
        """How far a graph's logits are from the reference: 1 - the worst per-sample cosine similarity."""
        return float(1.0 - np.min(sample_cosine(self.reference, self.logits(proto))))

    def summary(self, found: GateResult) -> dict:
        """The record of one gate result: verdict, worst cosine, strict top-1, max abs (and accuracy)."""
        parity = self.parity(found.logits)
        out = {
            "passed": found.passed,
            "cosine_min": parity.worst_metric("cosine_min"),
            "top1": parity.worst_metric("top1"),
            "max_abs": parity.worst_metric("max_abs"),
        }
        accuracy = self.accuracy(found.logits)
        if accuracy is not None:
            out["accuracy"] = accuracy
        return out


def _kept_reason(block: str, damage: float) -> str:
    return f"quantized alone it costs 1 - cosine {damage:.2e}, the worst left"


def _gated(
    build: Callable[[Collection[str]], onnx.ModelProto], blocks: dict[str, list[str]], gate: Int8Gate
) -> tuple[onnx.ModelProto, dict, GateResult]:
    """The graph with every block quantized and, when it fails ``gate``, the search's graph; the record
    (``kept_blocks``, ``first_try``, ``final``; ``sensitivity`` when even the search fails: the first try
    is kept then) and the final gate result."""
    proto = build(frozenset())
    found = gate(proto)
    info: dict = {"kept_blocks": [], "first_try": gate.summary(found)}
    if not found.passed:
        search = keep_in_higher_precision(
            blocks, build=build, damage=gate.damage, gate=gate, reason=_kept_reason
        )
        if search.passed and search.graph is not None and search.gate is not None:
            proto, found = search.graph, search.gate
            info["kept_blocks"] = [
                {"block": k.group, "nodes": len(k.nodes), "damage": round(k.damage, 6), "reason": k.reason}
                for k in search.kept
            ]
        else:
            info["sensitivity"] = SEARCH_FAILED  # the gate's failure is reported by the caller's check
    info["final"] = gate.summary(found)
    return proto, info, found


def quantize_qdq(
    fp16: onnx.ModelProto,
    amax: dict[str, float],
    blocks: dict[str, list[str]],
    gate: Int8Gate,
    *,
    weight_scale: dict[str, float] | None = None,
) -> tuple[onnx.ModelProto, dict, GateResult]:
    """The TensorRT Q/DQ graph of the FP16 graph (:func:`make_qdq`), gated, with ``blocks`` (block -> node
    names) kept in higher precision worst first when the first try fails; returns the graph, its record
    and its gate result."""

    def build(exclude: Collection[str]) -> onnx.ModelProto:
        return make_qdq(fp16, amax, exclude=exclude, weight_scale=weight_scale)[0]

    return _gated(build, blocks, gate)


def quantize_cpu(
    fp32: onnx.ModelProto, blocks: dict[str, list[str]], gate: Int8Gate
) -> tuple[onnx.ModelProto, dict, GateResult]:
    """The CPU INT8 graph of the FP32 graph (:func:`make_cpu_int8`), gated like :func:`quantize_qdq` over
    ``blocks`` restricted to their MatMul/Gemm nodes (ONNX Runtime's CPU provider has no fast ConvInteger,
    so Conv is never quantized there)."""
    matmuls = {n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Gemm")}
    cpu_blocks = {b: [n for n in nodes if n in matmuls] for b, nodes in blocks.items()}
    cpu_blocks = {b: nodes for b, nodes in cpu_blocks.items() if nodes}

    def build(exclude: Collection[str]) -> onnx.ModelProto:
        return make_cpu_int8(fp32, exclude=exclude)

    return _gated(build, cpu_blocks, gate)
