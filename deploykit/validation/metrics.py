"""The comparator: per-output parity metrics between a reference and a candidate, checked against
tolerances. Separate from the runners (which only produce outputs).

Definitions (``N`` samples, outputs flattened per sample):

* ``max_abs`` / ``mean_abs``: of ``|candidate - reference|``.
* ``max_rel``: ``max |c - r| / max(|r|, REL_FLOOR)`` — the floor keeps near-zero logits from dominating.
* ``cosine_min`` / ``cosine_mean``: cosine similarity per sample, worst and mean.
* ``top1``: fraction of samples whose arg-max class agrees (strict). ``top1_decisive``: the same, counting a
  disagreement only when the reference prefers its class over the candidate's choice by at least
  ``top1_margin`` logits (near-ties between classes are not decided by the model — randomly initialised
  models have many); ``near_ties`` counts the forgiven samples. ``top5``: fraction whose SET of top-k classes
  (``k = min(5, classes)``) is identical.
* ``nonfinite``: NaN/Inf count in either array — any is a failure whatever the tolerances.

:func:`check` turns each metric the tolerances gate into a :class:`Check` record (passed or not);
a :class:`ParityResult` holds them and derives its verdict, failures and worst failure from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from deploykit.core.artifacts import Named
from deploykit.core.config import Tolerances
from deploykit.core.errors import ComparisonError

REL_FLOOR = 1e-3


@dataclass(frozen=True, kw_only=True)
class OutputMetrics:
    name: str
    samples: int
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine_min: float
    cosine_mean: float
    top1: float | None
    top5: float | None
    nonfinite: int
    top1_decisive: float | None = None
    near_ties: int = 0

    def to_dict(self) -> dict:
        """Plain JSON values: non-finite metrics (an output with NaN/Inf) become ``None``."""
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        return out


class CheckKind(Named):
    """What a :class:`Check` checked: a parity metric, a metric against a stored baseline, ``--locate``, or
    the accuracy on labelled images."""

    PARITY = "parity"
    BASELINE = "baseline"
    LOCATE = "locate"
    ACCURACY = "accuracy"


#: metrics that must stay at or below their threshold (the others: at or above it)
UPPER_BOUNDS = ("nonfinite", "max_abs", "mean_abs", "max_rel", "accuracy_drop")


@dataclass(frozen=True, kw_only=True)
class Check:
    """One gated check and its verdict: every report of a gate (exit code, text, JSON, JUnit) is rendered
    from these records.

    ``kind`` ``parity``: ``metric`` of ``output`` against the tolerance ``threshold`` (``nonfinite``: a count of
    NaN/Inf values, none allowed). ``baseline``: ``metric`` against ``threshold``, the limit derived from the
    stored ``baseline`` value. ``locate``: whether a module of the model diverges (``detail`` says which).
    """

    output: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    kind: CheckKind = CheckKind.PARITY
    baseline: float | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CheckKind):
            kinds = ", ".join(k.value for k in CheckKind)
            raise ValueError(f"check kind must be a CheckKind ({kinds}), got {self.kind!r}")

    def excess(self) -> float:
        """How far past its threshold (relative), for picking the worst failure; non-finite is infinite."""
        if self.metric == "nonfinite" or self.threshold is None or self.value is None:
            return math.inf
        if self.metric in UPPER_BOUNDS:
            return self.value / max(self.threshold, 1e-30)
        return (self.threshold - self.value) / max(self.threshold, 1e-30) + 1.0

    def describe(self) -> str:
        if self.kind in (CheckKind.LOCATE, CheckKind.ACCURACY):
            return self.detail
        if self.kind is CheckKind.BASELINE:
            verdict = "within" if self.passed else "regressed from"
            return (
                f"{self.output}: {self.metric} = {self.value:.6g} {verdict} baseline {self.baseline:.6g} "
                f"(limit {self.threshold:.6g})"
            )
        if self.metric == "nonfinite":
            return f"{self.output}: nonfinite = {int(self.value)} NaN/Inf values (needs 0)"
        op = "<=" if self.metric in UPPER_BOUNDS else ">="
        return f"{self.output}: {self.metric} = {self.value:.6g} (needs {op} {self.threshold:.6g})"

    def to_dict(self) -> dict:
        """The record as plain JSON values (a non-finite value becomes ``None``)."""

        def plain(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "kind": self.kind.value,
            "output": self.output,
            "metric": self.metric,
            "value": plain(self.value),
            "threshold": plain(self.threshold),
            "baseline": plain(self.baseline),
            "passed": self.passed,
            "message": self.describe(),
        }


def accuracy_check(
    output: str, reference: float, accuracy: float, max_drop: float | None, images: int
) -> Check:
    """The accuracy of a candidate against its reference's on ``images`` labelled images; gated when
    ``max_drop`` is given (else recorded, passing)."""
    drop = reference - accuracy
    passed = max_drop is None or drop <= max_drop + 1e-12
    limit = f"needs <= {max_drop:.2%}" if max_drop is not None else "not gated"
    return Check(
        output=output,
        metric="accuracy_drop",
        value=drop,
        threshold=max_drop,
        passed=passed,
        kind=CheckKind.ACCURACY,
        detail=(
            f"{output}: accuracy {accuracy:.2%} vs {reference:.2%} on {images} labelled images "
            f"(drop {drop:+.2%}, {limit})"
        ),
    )


def sample_cosine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``(N, D)`` arrays; 1 where either row is all zeros."""
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1)
    return np.where(norms > 0, (r * c).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)


def compute_metrics(
    reference: np.ndarray, candidate: np.ndarray, name: str = "logits", top1_margin: float = 0.0
) -> OutputMetrics:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ComparisonError(f"output {name!r}: shape {cand.shape} does not match the reference {ref.shape}")
    if ref.ndim == 0 or ref.shape[0] == 0:
        raise ComparisonError(f"output {name!r}: nothing to compare (shape {ref.shape})")
    n = ref.shape[0]
    nonfinite = int((~np.isfinite(ref)).sum() + (~np.isfinite(cand)).sum())
    r, c = ref.reshape(n, -1), cand.reshape(n, -1)
    if nonfinite:
        nan = float("nan")
        return OutputMetrics(
            name=name,
            samples=n,
            max_abs=nan,
            max_rel=nan,
            mean_abs=nan,
            cosine_min=nan,
            cosine_mean=nan,
            top1=None,
            top5=None,
            nonfinite=nonfinite,
        )
    diff = np.abs(c - r)
    rel = diff / np.maximum(np.abs(r), REL_FLOOR)
    cos = sample_cosine(r, c)
    top1 = top5 = decisive = None
    ties = 0
    if ref.ndim == 2:
        r_top, c_top = r.argmax(axis=1), c.argmax(axis=1)
        top1 = float((r_top == c_top).mean())
        rows = np.arange(n)
        gap = r[rows, r_top] - r[rows, c_top]  # how much the reference prefers its class to the candidate's
        tie = (r_top != c_top) & (gap < top1_margin)
        ties = int(tie.sum())
        decisive = float(((r_top == c_top) | tie).mean())
        k = min(5, r.shape[1])
        rk = np.sort(np.argsort(-r, axis=1, kind="stable")[:, :k], axis=1)
        ck = np.sort(np.argsort(-c, axis=1, kind="stable")[:, :k], axis=1)
        top5 = float((rk == ck).all(axis=1).mean())
    return OutputMetrics(
        name=name,
        samples=n,
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        mean_abs=float(diff.mean()),
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        top1=top1,
        top5=top5,
        nonfinite=0,
        top1_decisive=decisive,
        near_ties=ties,
    )


def check(metrics: OutputMetrics, tol: Tolerances) -> list[Check]:
    """One record, passed or not, per metric of ``metrics`` that ``tol`` gates: ``nonfinite``, ``max_abs``,
    ``cosine_min``, ``top1_decisive`` when ``tol.top1_margin`` > 0 (else strict ``top1``) for class scores,
    and ``top5`` when ``tol.min_top5`` is set. An output with NaN/Inf gets only the failed ``nonfinite``
    record: its other metrics are undefined."""
    m = metrics
    if m.nonfinite:
        return [
            Check(output=m.name, metric="nonfinite", value=float(m.nonfinite), threshold=None, passed=False)
        ]

    def at_least(metric: str, value: float, threshold: float) -> Check:
        return Check(
            output=m.name, metric=metric, value=value, threshold=threshold, passed=value >= threshold
        )

    checks = [
        Check(output=m.name, metric="nonfinite", value=0.0, threshold=None, passed=True),
        Check(
            output=m.name,
            metric="max_abs",
            value=m.max_abs,
            threshold=tol.max_abs,
            passed=m.max_abs <= tol.max_abs,
        ),
        at_least("cosine_min", m.cosine_min, tol.min_cosine),
    ]
    if tol.top1_margin > 0 and m.top1_decisive is not None:
        checks.append(at_least("top1_decisive", m.top1_decisive, tol.min_top1))
    elif m.top1 is not None:
        checks.append(at_least("top1", m.top1, tol.min_top1))
    if m.top5 is not None and tol.min_top5 is not None:
        checks.append(at_least("top5", m.top5, tol.min_top5))
    return checks


@dataclass(kw_only=True)
class ParityResult:
    """Parity of one stage: the metrics of every output and the :class:`Check` records they were gated by;
    the verdict, the failures and the worst failure are all derived from the records."""

    stage: str
    tolerances: Tolerances
    outputs: dict[str, OutputMetrics] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def worst(self) -> Check | None:
        return max(self.failures, key=Check.excess, default=None)

    def worst_metric(self, metric: str) -> float:
        """The worst value of ``metric`` over outputs (max for errors, min for agreements)."""
        values = [getattr(m, metric) for m in self.outputs.values() if getattr(m, metric) is not None]
        if not values:
            return float("nan")
        return max(values) if metric in ("max_abs", "max_rel", "mean_abs", "nonfinite") else min(values)

    def to_dict(self) -> dict:
        failure_keys = ("output", "metric", "value", "threshold", "message")
        return {
            "stage": self.stage,
            "passed": self.passed,
            "tolerances": {k: getattr(self.tolerances, k) for k in self.tolerances.__dataclass_fields__},
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
            "failures": [{k: f.to_dict()[k] for k in failure_keys} for f in self.failures],
        }


def compare_outputs(
    references: dict[str, np.ndarray],
    candidates: dict[str, np.ndarray],
    tolerances: Tolerances,
    stage: str = "",
) -> ParityResult:
    missing = sorted(set(references) - set(candidates))
    if missing:
        raise ComparisonError(f"candidate is missing output(s): {', '.join(missing)}")
    result = ParityResult(stage=stage, tolerances=tolerances)
    for name, ref in references.items():
        metrics = compute_metrics(ref, candidates[name], name, tolerances.top1_margin)
        result.outputs[name] = metrics
        result.checks.extend(check(metrics, tolerances))
    return result


def per_sample(reference: np.ndarray, candidate: np.ndarray) -> dict[str, list[float | None]]:
    """Max abs error and cosine similarity of every sample (``None`` where NaN/Inf), for reports."""
    r = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    c = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(c - r).max(axis=1)
        cos = sample_cosine(r, c)

    def clean(values: np.ndarray, digits: int) -> list[float | None]:
        return [float(f"{v:.{digits}g}") if math.isfinite(v) else None for v in values]

    return {"max_abs": clean(diff, 6), "cosine": clean(cos, 12)}
