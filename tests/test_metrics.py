"""The parity comparator: metrics on hand-computed arrays, tolerance checks, the result object."""

import json
import math

import numpy as np
import pytest

from deploykit.core.errors import ComparisonError, ConfigError, DeployKitError
from deploykit.validation import ParityResult, Tolerances, check, compare_outputs, compute_metrics
from deploykit.validation.metrics import REL_FLOOR, Check, CheckKind


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


LOOSE = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.0, min_top5=0.0)
STRICT = Tolerances(max_abs=1e-3, min_cosine=0.9999, min_top1=1.0, min_top5=1.0)


def test_hand_computed_values():
    ref = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    cand = np.array([[1.0, 2.0, 3.5], [0.0, 0.2, 1.0]])
    m = compute_metrics(ref, cand, "logits")
    assert m.name == "logits" and m.samples == 2
    assert m.max_abs == pytest.approx(0.5)
    assert m.mean_abs == pytest.approx(0.7 / 6)
    assert m.max_rel == pytest.approx(0.2 / REL_FLOOR)  # the zero reference entry is floored
    cos0 = 15.5 / math.sqrt(14 * 17.25)
    cos1 = 1 / math.sqrt(1.04)
    assert m.cosine_min == pytest.approx(min(cos0, cos1))
    assert m.cosine_mean == pytest.approx((cos0 + cos1) / 2)
    assert m.top1 == 1.0 and m.top5 == 1.0  # 3 classes: k = 3, the set is every class
    assert m.nonfinite == 0


def test_relative_error_of_nonzero_reference():
    m = compute_metrics(np.array([[2.0, -4.0]]), np.array([[2.1, -4.2]]))
    assert m.max_rel == pytest.approx(0.05)


def test_identical_outputs():
    x = np.random.default_rng(0).standard_normal((8, 1000)).astype(np.float32)
    m = compute_metrics(x, x.copy())
    assert m.max_abs == 0 and m.mean_abs == 0 and m.max_rel == 0
    assert m.cosine_min == pytest.approx(1.0) and m.cosine_mean == pytest.approx(1.0)
    assert m.top1 == 1.0 and m.top5 == 1.0
    checks = check(m, STRICT)
    assert [c.metric for c in checks] == ["nonfinite", "max_abs", "cosine_min", "top1", "top5"]
    assert all(c.passed and c.output == "logits" and c.kind == "parity" for c in checks)


def test_zero_samples_have_cosine_one():
    m = compute_metrics(np.zeros((2, 4)), np.zeros((2, 4)))
    assert m.cosine_min == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["candidate", "reference"])
def test_nonfinite_always_fails(bad, where):
    ref = np.ones((4, 10))
    cand = ref.copy()
    (cand if where == "candidate" else ref)[2, 3] = bad
    m = compute_metrics(ref, cand)
    assert m.nonfinite == 1
    records = check(m, LOOSE)  # the other metrics are undefined: only the nonfinite record
    assert [(f.metric, f.passed, f.value) for f in records] == [("nonfinite", False, 1.0)]
    result = compare_outputs({"logits": ref}, {"logits": cand}, LOOSE)
    assert not result.passed and result.worst().metric == "nonfinite"
    assert result.worst().describe() == "logits: nonfinite = 1 NaN/Inf values (needs 0)"


def test_top1_disagreement_detected():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4, 10))
    cand = ref.copy()
    top, second = np.argsort(-ref[1])[:2]
    cand[1, [top, second]] = cand[1, [second, top]]  # sample 1 now predicts its runner-up class
    m = compute_metrics(ref, cand)
    assert m.top1 == pytest.approx(0.75)
    failures = failed(check(m, Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.99)))
    assert [(f.output, f.metric) for f in failures] == [("logits", "top1")]
    assert failures[0].value == pytest.approx(0.75) and failures[0].threshold == 0.99
    message = failures[0].describe()
    assert "top1" in message and "0.75" in message and "0.99" in message


def test_top5_is_a_set():
    ref = np.array([[10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 0.0]])
    reordered = np.array([[6.0, 7.0, 8.0, 9.0, 10.0, 5.0, 0.0]])  # same five classes, other order
    m = compute_metrics(ref, reordered)
    assert m.top5 == 1.0 and m.top1 == 0.0
    swapped = np.array([[10.0, 9.0, 8.0, 7.0, 5.0, 6.0, 0.0]])  # fifth and sixth class trade places
    m = compute_metrics(ref, swapped)
    assert m.top1 == 1.0 and m.top5 == 0.0
    loose_but_top5 = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.0, min_top5=0.5)
    assert [f.metric for f in failed(check(m, loose_but_top5))] == ["top5"]


def test_top_k_only_for_two_dimensional_outputs():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 4))
    m = compute_metrics(x, x + 0.01)
    assert m.top1 is None and m.top5 is None
    assert m.max_abs == pytest.approx(0.01)
    checks = check(m, Tolerances(max_abs=0.1, min_cosine=0.99, min_top1=1.0, min_top5=1.0))
    assert [c.metric for c in checks] == ["nonfinite", "max_abs", "cosine_min"]  # no class scores: no top-k
    assert all(c.passed for c in checks)


def test_each_failure_names_metric_value_and_threshold():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[0.0, 1.0], [0.0, 1.0]])
    failures = failed(check(compute_metrics(ref, cand, "probs"), STRICT))
    by_metric = {f.metric: f for f in failures}
    assert set(by_metric) == {"max_abs", "cosine_min", "top1"}
    assert by_metric["max_abs"].value == 1.0 and by_metric["max_abs"].threshold == STRICT.max_abs
    assert by_metric["cosine_min"].value == pytest.approx(0.0)
    assert all(f.output == "probs" for f in failures)


def test_shape_mismatch_and_empty_outputs():
    with pytest.raises(ComparisonError, match=r"\(2, 5\)") as info:
        compute_metrics(np.zeros((2, 5)), np.zeros((2, 6)))
    assert isinstance(info.value, DeployKitError) and isinstance(info.value, ValueError)
    with pytest.raises(ComparisonError, match="nothing to compare"):
        compute_metrics(np.zeros((0, 5)), np.zeros((0, 5)))


def test_compare_outputs_needs_every_reference_output():
    with pytest.raises(ComparisonError, match="features"):
        compare_outputs(
            {"logits": np.zeros((1, 3)), "features": np.zeros((1, 4))}, {"logits": np.zeros((1, 3))}, LOOSE
        )


def test_parity_result_worst_and_json():
    ref = np.eye(4)
    small_error = ref + 0.002  # max_abs twice the 1e-3 budget
    wrong_class = ref[:, ::-1].copy()  # every prediction wrong
    result = compare_outputs({"a": ref, "b": ref}, {"a": small_error, "b": wrong_class}, STRICT, stage="fp32")
    assert isinstance(result, ParityResult) and not result.passed
    assert {f.output for f in result.failures} == {"a", "b"}
    worst = result.worst()
    assert worst.output == "b"
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and data["stage"] == "fp32"
    assert set(data["outputs"]) == {"a", "b"}
    assert data["outputs"]["a"]["max_abs"] == pytest.approx(0.002)
    assert all({"output", "metric", "value", "threshold", "message"} <= set(f) for f in data["failures"])

    assert all(set(f) == {"output", "metric", "value", "threshold", "message"} for f in data["failures"])
    assert result.failures == [c for c in result.checks if not c.passed]

    passing = compare_outputs({"a": ref}, {"a": ref + 1e-6}, STRICT)
    assert passing.passed and passing.worst() is None and passing.to_dict()["failures"] == []
    assert len(passing.checks) == 5 and all(c.passed for c in passing.checks)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_abs": -1.0, "min_cosine": 0.9, "min_top1": 0.9},
        {"max_abs": 1.0, "min_cosine": 1.5, "min_top1": 0.9},
        {"max_abs": 1.0, "min_cosine": 0.9, "min_top1": 0.9, "min_top5": 2.0},
        {"max_abs": float("nan"), "min_cosine": 0.9, "min_top1": 0.9},
    ],
)
def test_invalid_tolerances(kwargs):
    with pytest.raises(ConfigError):
        Tolerances(**kwargs)


def _swapped_top_two(ref: np.ndarray, row: int) -> np.ndarray:
    cand = ref.copy()
    top, second = np.argsort(-ref[row])[:2]
    cand[row, [top, second]] = cand[row, [second, top]]
    return cand


def test_one_record_per_gated_metric_and_top1_or_decisive():
    ref = np.array([[5.0, 1.0, 0.0, -1.0], [0.0, 3.0, 2.0, 1.0], [1.0, 0.0, 4.0, 2.0], [2.0, 0.0, 1.0, 6.0]])
    cand = _swapped_top_two(ref, 1)  # sample 1 flips between classes 1 logit apart: a decisive flip
    strict = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.9)
    assert [(c.metric, c.passed) for c in check(compute_metrics(ref, cand), strict)] == [
        ("nonfinite", True),
        ("max_abs", True),
        ("cosine_min", True),
        ("top1", False),
    ]
    margin = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.9, min_top5=0.0, top1_margin=0.5)
    records = check(compute_metrics(ref, cand, top1_margin=0.5), margin)
    assert [(c.metric, c.passed) for c in records] == [
        ("nonfinite", True),
        ("max_abs", True),
        ("cosine_min", True),
        ("top1_decisive", False),  # gated instead of top1, never both
        ("top5", True),
    ]
    decisive = records[3]
    assert decisive.value == pytest.approx(0.75) and decisive.threshold == 0.9
    assert decisive.describe() == "logits: top1_decisive = 0.75 (needs >= 0.9)"
    # a gap under the margin is a near-tie: the same flip passes
    wide = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.9, top1_margin=1.5)
    assert all(c.passed for c in check(compute_metrics(ref, cand, top1_margin=1.5), wide))


def test_decisive_top1_failure_is_a_failure_of_the_result():
    ref = np.array([[5.0, 1.0, 0.0], [0.0, 3.0, 2.0]])
    tol = Tolerances(max_abs=1e9, min_cosine=0.0, min_top1=0.9, top1_margin=0.01)
    result = compare_outputs({"logits": ref}, {"logits": _swapped_top_two(ref, 0)}, tol, stage="fp16")
    assert not result.passed and [f.metric for f in result.failures] == ["top1_decisive"]
    assert result.worst().metric == "top1_decisive"
    assert [f["metric"] for f in result.to_dict()["failures"]] == ["top1_decisive"]


def test_check_records_are_keyword_only_and_json_clean():
    with pytest.raises(TypeError):
        Check("logits", "max_abs", 1.0, 0.5, False)  # the positional call this forbids
    record = Check(output="logits", metric="max_abs", value=float("nan"), threshold=0.5, passed=False)
    data = record.to_dict()
    assert data["value"] is None and data["passed"] is False and data["kind"] == "parity"
    assert record.kind is CheckKind.PARITY and f"{record.kind}" == "parity" and type(data["kind"]) is str
    assert json.loads(json.dumps(data)) == data
    with pytest.raises(ValueError, match="kind"):
        Check(output="x", metric="y", value=1.0, threshold=1.0, passed=True, kind="other")
    with pytest.raises(ValueError, match="CheckKind"):  # the kind is the enum, never its spelling
        Check(output="x", metric="y", value=1.0, threshold=1.0, passed=True, kind="baseline")


def test_worst_is_the_largest_relative_excess():
    ref = np.eye(4) * 10
    tol = Tolerances(max_abs=1e-3, min_cosine=0.5, min_top1=0.0)
    result = compare_outputs({"a": ref, "b": ref}, {"a": ref + 2e-3, "b": ref + 1.0}, tol)
    assert [(f.output, f.metric) for f in result.failures] == [("a", "max_abs"), ("b", "max_abs")]
    assert result.worst().output == "b"  # 1000x its budget, against 2x


def test_tolerances_are_keyword_only():
    with pytest.raises(TypeError):
        Tolerances(1e-4, 0.99999, 1.0, 1.0)
    assert Tolerances(max_abs=1e-4, min_cosine=0.99999, min_top1=1.0).min_top5 is None
