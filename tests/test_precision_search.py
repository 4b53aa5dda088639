"""The one higher-precision search FP16 and INT8 share (deploykit.transforms.precision_search): its order,
its stopping rule and its failure on fakes; and, on a small residual graph built with onnx.helper, a planted
damaging block kept by it — for FP16 (a segment whose constant FP16 cannot hold) and for INT8 (one weight
scale x100) — through the same function."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.core.config import Tolerances
from deploykit.core.onnx_io import serialize
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms import fp16, int8_gated, precision_search
from deploykit.transforms import int8 as q
from deploykit.transforms.precision_search import (
    GateResult,
    keep_in_higher_precision,
    worst_first,
    worst_first_later_ties,
)
from deploykit.validation.metrics import Check

WIDTH, CLASSES = 8, 4


# ---------------------------------------------------------------------------------- the search on fakes
def _graph(nodes: frozenset[str]) -> onnx.ModelProto:
    """A stand-in graph that records which nodes its build kept in higher precision."""
    return helper.make_model(helper.make_graph([], ",".join(sorted(nodes)), [], []))


def _kept(graph: onnx.ModelProto) -> set[str]:
    return set(filter(None, graph.graph.name.split(",")))


def _verdict(passed: bool) -> GateResult:
    check = Check(
        output="logits", metric="cosine_min", value=1.0 if passed else 0.5, threshold=0.9, passed=passed
    )
    return GateResult(checks=(check,), logits=np.zeros((1, 1)))


class Fake:
    """Groups with fixed damages; the gate passes once ``needed`` nodes are all kept."""

    def __init__(self, damages: dict[str, float], needed: set[str]) -> None:
        self.groups = {name: [f"{name}/a", f"{name}/b"] for name in damages}
        self.damages, self.needed = damages, needed
        self.builds: list[set[str]] = []
        self.gated: list[set[str]] = []

    def build(self, nodes: frozenset[str]) -> onnx.ModelProto:
        self.builds.append(set(nodes))
        return _graph(nodes)

    def damage(self, graph: onnx.ModelProto) -> float:
        lower = {g for g, nodes in self.groups.items() if not set(nodes) <= _kept(graph)}
        assert len(lower) == 1, "damage is measured with exactly one group in the lower precision"
        return self.damages[lower.pop()]

    def gate(self, graph: onnx.ModelProto) -> GateResult:
        self.gated.append(_kept(graph))
        return _verdict(self.needed <= _kept(graph))

    def search(self, **options):
        return keep_in_higher_precision(
            self.groups,
            build=self.build,
            damage=self.damage,
            gate=self.gate,
            reason=lambda group, damage: f"{group}: {damage:g}",
            **options,
        )


def test_search_keeps_worst_first_and_stops_at_the_first_pass():
    fake = Fake({"a": 0.1, "b": 0.7, "c": 0.3, "d": 0.5}, needed={"b/a", "d/b"})
    result = fake.search()
    assert result.passed and result.gate is not None and result.gate.passed
    assert [k.group for k in result.kept] == ["b", "d"]
    assert [k.reason for k in result.kept] == ["b: 0.7", "d: 0.5"]
    assert result.kept[0].nodes == ("b/a", "b/b") and result.kept[0].damage == 0.7
    assert dict(result.damage) == {"a": 0.1, "b": 0.7, "c": 0.3, "d": 0.5}
    # one build per group for its damage (everything else kept), then one build + gate per kept group
    assert len(fake.builds) == 4 + 2 and fake.gated == [{"b/a", "b/b"}, {"b/a", "b/b", "d/a", "d/b"}]
    assert _kept(result.graph) == {"b/a", "b/b", "d/a", "d/b"}


def test_search_reports_failure_when_every_group_kept_fails():
    fake = Fake({"a": 0.2, "b": 0.1}, needed={"nothing-has-this-node"})
    result = fake.search()
    assert not result.passed and result.gate is not None and not result.gate.passed
    assert [k.group for k in result.kept] == ["a", "b"]
    assert _kept(result.graph) == {"a/a", "a/b", "b/a", "b/b"}  # the last graph: every group kept


def test_search_without_groups_builds_nothing():
    fake = Fake({}, needed=set())
    result = fake.search()
    assert not result.passed and result.graph is None and result.gate is None and result.kept == ()
    assert fake.builds == []


def test_nodes_already_kept_go_into_every_build():
    fake = Fake({"a": 0.2, "b": 0.1}, needed={"a/a"})
    result = fake.search(kept=frozenset({"x", "b/a"}))
    assert all({"x", "b/a"} <= nodes for nodes in fake.builds)
    assert result.passed and [k.group for k in result.kept] == ["a"]


def test_ties_follow_the_order_function():
    damages = {"a": 0.5, "b": 0.2, "c": 0.5, "d": 0.2}
    assert worst_first(damages) == ["a", "c", "b", "d"]  # stable: INT8's order
    assert worst_first_later_ties(damages) == ["c", "a", "d", "b"]  # FP16's sorted((err, i), reverse=True)
    errors = [(damages[g], i) for i, g in enumerate(damages)]
    assert [list(damages)[i] for _, i in sorted(errors, reverse=True)] == worst_first_later_ties(damages)
    for order in (worst_first, worst_first_later_ties):
        fake = Fake(damages, needed={"a/a", "c/a"})
        assert [k.group for k in fake.search(order=order).kept] == order(damages)[:2]


def test_gate_result_passes_when_every_check_passes():
    assert GateResult(checks=(), logits=np.zeros(1)).passed
    assert not GateResult(
        checks=(_verdict(True).checks[0], _verdict(False).checks[0]), logits=np.zeros(1)
    ).passed
    assert fp16.gate_result(np.zeros(1), True).passed and not fp16.gate_result(np.zeros(1), False).passed
    checks = _verdict(False).checks
    assert fp16.gate_result(np.zeros(1), checks).checks == checks


# ------------------------------------------------------------------- a planted block, FP16 and INT8
def _blocks_graph(*, fragile: int | None = None, seed: int = 0) -> onnx.ModelProto:
    """``x -> 3 residual blocks (h += LayerNorm(h) @ W) -> LayerNorm -> head``, nodes named the TorchScript
    way (``/blocks.1/fc/MatMul``: their scopes). ``fragile``: that block's branch goes through
    ``(m * 1.0001 - m) * 1e4`` — ``m`` in FP32, 0 in FP16, where 1.0001 rounds to 1."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def layer_norm(scope: str, x: str) -> str:
        scale, bias = (
            const(f"{scope}.norm.weight", np.ones(WIDTH)),
            const(f"{scope}.norm.bias", np.zeros(WIDTH)),
        )
        name = f"/{scope}/norm/LayerNormalization"
        nodes.append(
            helper.make_node("LayerNormalization", [x, scale, bias], [f"{scope}/n"], name=name, axis=-1)
        )
        return f"{scope}/n"

    h = "input"
    for i in range(3):
        scope = f"blocks.{i}"
        weight = const(f"{scope}.fc.weight", rng.standard_normal((WIDTH, WIDTH)) * 0.5)
        normed = layer_norm(scope, h)
        nodes.append(helper.make_node("MatMul", [normed, weight], [f"{scope}/m"], name=f"/{scope}/fc/MatMul"))
        branch = f"{scope}/m"
        if i == fragile:
            one, gain = const(f"{scope}.one", np.array(1.0001)), const(f"{scope}.gain", np.array(1e4))
            nodes += [
                helper.make_node("Mul", [branch, one], [f"{scope}/p"], name=f"/{scope}/fragile/Mul"),
                helper.make_node("Sub", [f"{scope}/p", branch], [f"{scope}/d"], name=f"/{scope}/fragile/Sub"),
                helper.make_node("Mul", [f"{scope}/d", gain], [f"{scope}/g"], name=f"/{scope}/fragile/Mul_1"),
            ]
            branch = f"{scope}/g"
        nodes.append(helper.make_node("Add", [h, branch], [f"{scope}/h"], name=f"/{scope}/Add"))
        h = f"{scope}/h"
    head = const("head.weight", rng.standard_normal((WIDTH, CLASSES)))
    nodes.append(helper.make_node("MatMul", [layer_norm("head", h), head], ["logits"], name="/head/MatMul"))
    graph = helper.make_graph(
        nodes,
        "blocks",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return onnx.shape_inference.infer_shapes(proto)


def _images(count: int = 64) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((count, WIDTH)).astype(np.float32) * 2


def _logits(proto: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    return OrtRunner(serialize(proto)).run(images)


@pytest.fixture
def searches(monkeypatch):
    """Every call of the shared search, from the FP16 and the INT8 transforms alike."""
    calls: list[dict] = []

    def recording(groups, **options):
        result = keep_in_higher_precision(groups, **options)
        calls.append({"groups": dict(groups), "result": result})
        return result

    assert fp16.keep_in_higher_precision is int8_gated.keep_in_higher_precision is keep_in_higher_precision
    monkeypatch.setattr(fp16, "keep_in_higher_precision", recording)
    monkeypatch.setattr(int8_gated, "keep_in_higher_precision", recording)
    return calls


def test_fp16_search_keeps_the_planted_segment(searches):
    images = _images()

    def gate_on(reference):
        def gate(logits):
            error = float(np.abs(logits - reference).max())
            return [
                Check(output="logits", metric="max_abs", value=error, threshold=0.05, passed=error <= 0.05)
            ]

        return gate

    clean = _blocks_graph()
    report = fp16.make_fp16(
        clean, images, _logits(clean, images), gate_on(_logits(clean, images)), range_screen=0.0
    )[1]
    assert report.gate.passed and report.segments_checked == 0 and not searches  # no search needed
    proto = _blocks_graph(fragile=1)
    reference = _logits(proto, images)
    converted, report = fp16.make_fp16(proto, images, reference, gate_on(reference), range_screen=0.0)
    assert len(searches) == 1 and list(searches[0]["groups"]) == [f"segment {i}" for i in range(4)]
    result = searches[0]["result"]
    assert result.passed and [k.group for k in result.kept] == ["segment 1"]
    assert max(result.damage, key=result.damage.get) == "segment 1"
    assert result.damage["segment 1"] > 100 * max(v for k, v in result.damage.items() if k != "segment 1")
    segment = [k for k in report.kept_fp32 if k["reason"].startswith("segment check")]
    planted = [
        "/blocks.1/fc/MatMul",
        *(f"/blocks.1/fragile/{op}" for op in ("Mul", "Sub", "Mul_1")),
        "/blocks.1/Add",
    ]
    assert [k["node"] for k in segment] == planted  # the segment's nodes, LayerNormalization listed apart
    reason = "segment check: segment 1 alone in FP16 gives max abs logit error"
    assert all(k["reason"].startswith(reason) for k in segment)
    assert report.segments_checked == 4 and report.gate is not None and report.gate.passed
    out = _logits(converted, images)
    assert np.array_equal(out, report.logits) and np.abs(out - reference).max() <= 0.05
    # the other blocks really are FP16
    fc = {n.name: n for n in converted.graph.node}["/blocks.0/fc/MatMul"]
    weight = next(i for i in converted.graph.initializer if i.name == fc.input[1])
    assert weight.data_type == TensorProto.FLOAT16


def test_int8_search_keeps_the_block_with_the_planted_scale(searches):
    fp32 = _blocks_graph()
    images = _images(96)
    reference = _logits(fp32, images)
    half = fp16.convert(fp32, set())
    amax = q.calibrate(fp32, images[:32], "max")
    blocks = q.group_by_block(q.node_blocks(half))
    assert set(blocks) == {"blocks.0", "blocks.1", "blocks.2", "head"}
    tol = Tolerances(max_abs=100.0, min_cosine=0.99, min_top1=0.0)
    gate = int8_gated.Int8Gate(images=images, reference=reference, tolerances=tol)

    clean, info, found = int8_gated.quantize_qdq(half, amax, blocks, gate)
    assert info["first_try"]["passed"] and info["kept_blocks"] == [] and not searches
    assert found.passed and len(q.qdq_nodes(clean)) > 0

    planted = {"/blocks.1/fc/MatMul": 100.0}
    graph, info, found = int8_gated.quantize_qdq(half, amax, blocks, gate, weight_scale=planted)
    assert not info["first_try"]["passed"] and info["final"]["passed"] and found.passed
    assert len(searches) == 1 and searches[0]["groups"] == blocks
    result = searches[0]["result"]
    assert max(result.damage, key=result.damage.get) == "blocks.1"
    assert [k["block"] for k in info["kept_blocks"]] == ["blocks.1"]
    kept = info["kept_blocks"][0]
    assert kept["nodes"] == 1 and kept["damage"] == round(result.damage["blocks.1"], 6)
    assert kept["reason"].startswith("quantized alone it costs 1 - cosine")
    quantized = {n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1].endswith("_dq")}
    assert quantized == {"/blocks.0/fc/MatMul", "/blocks.2/fc/MatMul", "/head/MatMul"}


def test_int8_records_a_search_that_fails_and_keeps_the_first_try(searches):
    fp32 = _blocks_graph()
    images = _images(32)
    shifted = _logits(fp32, images) + 1.0  # even the FP32 graph is 1.0 off this reference
    blocks = q.group_by_block(q.node_blocks(fp32))
    tol = Tolerances(max_abs=0.5, min_cosine=0.0, min_top1=0.0)
    gate = int8_gated.Int8Gate(images=images, reference=shifted, tolerances=tol)
    graph, info, found = int8_gated.quantize_cpu(fp32, blocks, gate)
    assert info["sensitivity"] == int8_gated.SEARCH_FAILED and info["kept_blocks"] == []
    assert list(info) == ["kept_blocks", "first_try", "sensitivity", "final"]
    assert info["first_try"] == info["final"] and not found.passed
    assert not searches[0]["result"].passed
    assert serialize(graph) == serialize(q.make_cpu_int8(fp32))  # the first try, every block quantized


def test_no_unittest_mock_in_the_package():
    root = Path(precision_search.__file__).resolve().parents[1]
    offenders = [p for p in root.rglob("*.py") if "unittest" in p.read_text(encoding="utf-8")]
    assert offenders == []
