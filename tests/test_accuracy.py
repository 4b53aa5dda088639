"""Paired accuracy statistics against hand computations on small tables: McNemar's exact p-value (the
binomial tail written out term by term) and Newcombe's interval (the Wilson bounds solved from their
quadratic, then combined), and the gate's accuracy records."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from deploykit.validation.accuracy import (
    Z95,
    accuracy_checks,
    mcnemar_exact,
    paired_accuracy,
    paired_difference_ci,
    wilson,
)
from deploykit.validation.metrics import CheckKind


def test_mcnemar_exact_equals_the_binomial_tail_by_hand():
    # b = 1 flip one way, c = 6 the other: P(X <= 1), X ~ Bin(7, 1/2) = (1 + 7) / 128; two-sided: 16/128
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128, abs=1e-15)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    # b = 3, c = 3: the tail reaches past the middle, p is capped at 1
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence either way
    # b = 0, c = 10: 2 / 1024
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024, abs=1e-15)
    # large n stays finite and equals the exact rational
    exact = Fraction(2 * sum(math.comb(2000, i) for i in range(951)), 2**2000)
    assert mcnemar_exact(950, 1050) == pytest.approx(float(exact), rel=1e-9)


def _wilson_by_hand(x: int, n: int) -> tuple[float, float]:
    """The roots of (p - x/n)^2 = z^2 p (1 - p) / n."""
    z2, phat = Z95**2, x / n
    a, b, c = 1 + z2 / n, -(2 * phat + z2 / n), phat**2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def test_wilson_is_the_root_of_its_quadratic():
    for x, n in ((0, 10), (3, 10), (10, 10), (17, 40)):
        assert wilson(x, n) == pytest.approx(_wilson_by_hand(x, n), abs=1e-12)


def test_newcombe_interval_of_a_small_table_by_hand():
    # a = 30 both right, b = 5 only the reference, c = 1 only the artifact, d = 4 neither; n = 40
    a, b, c, d = 30, 5, 1, 4
    n = a + b + c + d
    p1, p2 = Fraction(a + b, n), Fraction(a + c, n)
    l1, u1 = _wilson_by_hand(a + b, n)
    l2, u2 = _wilson_by_hand(a + c, n)
    phi = max(a * d - b * c - n / 2, 0) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))  # ad > bc here
    p1, p2 = float(p1), float(p2)
    low = (p1 - p2) - math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = (p1 - p2) + math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    assert paired_difference_ci(a, b, c, d) == pytest.approx((low, high), abs=1e-12)
    assert low < 0.1 < high  # the point estimate (5 - 1) / 40 lies inside


def test_no_flip_still_has_an_interval_and_a_zero_margin_sets_phi_to_zero():
    low, high = paired_difference_ci(100, 0, 0, 0)  # every image right both times
    assert low < 0 < high and high - low > 0.01
    lo2, hi2 = paired_difference_ci(50, 0, 0, 50)  # no flip; phi (2500 - 50) / 2500 = 0.98, not 1
    assert lo2 < 0 < hi2


def test_paired_accuracy_counts_flips_and_top5():
    labels = np.array([0, 1, 2, 3, 4, 5])
    # reference: right on 0-4; artifact: right on 0-2 and 5 (loses 3 and 4, gains 5)
    ref = np.array(
        [[0, 9, 8, 7, 6], [1, 9, 8, 7, 6], [2, 9, 8, 7, 6], [3, 9, 8, 7, 6], [4, 9, 8, 7, 6], [9, 5, 8, 7, 6]]
    )
    art = np.array(
        [[0, 9, 8, 7, 6], [1, 9, 8, 7, 6], [2, 9, 8, 7, 6], [9, 8, 7, 6, 1], [9, 4, 8, 7, 6], [5, 9, 8, 7, 6]]
    )
    found = paired_accuracy(labels, ref, art)
    assert found.table == (3, 2, 1, 0) and found.reference_only == 2 and found.artifact_only == 1
    assert found.reference_top1 == pytest.approx(5 / 6) and found.artifact_top1 == pytest.approx(4 / 6)
    assert found.reference_top5 == 1.0 and found.artifact_top5 == pytest.approx(
        5 / 6
    )  # 3 falls out of art's top 5
    assert found.drop_top1 == pytest.approx(1 / 6)
    assert found.p_value == pytest.approx(mcnemar_exact(2, 1))
    block = found.to_dict("digits")
    assert block["flips"] == {"reference_only": 2, "artifact_only": 1} and block["images"] == 6
    assert block["ci95"] == list(paired_difference_ci(3, 2, 1, 0))


def test_accuracy_records_gate_the_drop_and_the_floor():
    labels = np.arange(10)
    right = np.stack([labels, *(np.full(10, 99) for _ in range(4))], axis=1)
    wrong_two = right.copy()
    wrong_two[:2, 0] = 99
    found = paired_accuracy(labels, right, wrong_two)  # drop 0.2
    checks = accuracy_checks(found, artifact_top1=0.8, max_drop=0.1, min_accuracy=0.75)
    assert [c.kind for c in checks] == [CheckKind.ACCURACY, CheckKind.ACCURACY]
    drop, floor = checks
    assert not drop.passed and drop.value == pytest.approx(0.2) and drop.threshold == 0.1
    assert floor.passed and floor.metric == "top1"
    assert "McNemar" in drop.describe() and "drop +20.00 points" in drop.describe()
    assert accuracy_checks(found, artifact_top1=0.8, max_drop=0.3, min_accuracy=None)[0].passed
    only_floor = accuracy_checks(None, artifact_top1=0.5, max_drop=0.01, min_accuracy=0.6)
    assert [c.metric for c in only_floor] == ["top1"] and not only_floor[0].passed
