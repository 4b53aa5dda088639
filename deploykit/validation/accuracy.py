"""Accuracy on labelled images, paired: the reference (PyTorch FP32) and the artifact answer the same
images, so their difference is judged on the images where they disagree.

For ``N`` images let ``a`` be those both classify correctly (top-1), ``b`` those only the reference does
(the artifact's losses), ``c`` those only the artifact does, ``d`` those neither does. Then

- the top-1 drop is ``(b - c) / N`` (reference accuracy minus the artifact's, a fraction);
- its 95 % confidence interval is Newcombe's hybrid score interval for the difference of paired proportions
  (method 10 of Newcombe, Statistics in Medicine 17:2635-2650, 1998): the Wilson score intervals of both
  accuracies, combined with the correlation ``phi`` of the paired answers (``(ad - bc) / sqrt`` of the
  margins' product, ``ad - bc`` lowered by ``N / 2`` when positive, 0 when a margin is empty) — it stays
  inside [-1, 1] and does not collapse to a point when no image changed its answer;
- the p-value is McNemar's exact test: under "the artifact is as accurate as the reference" each of the
  ``b + c`` discordant images is equally likely to fall either way, so ``p = min(1, 2 P(X <= min(b, c)))``
  with ``X ~ Binomial(b + c, 1/2)``.

:func:`accuracy_checks` turns the comparison into the gate's records (kind ``accuracy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deploykit.validation.metrics import Check, CheckKind

#: the two-sided 95 % normal quantile
Z95 = 1.959963984540054
TOP_K = 5


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``successes / n``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def paired_difference_ci(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for ``(a + b) / n - (a + c) / n`` of a paired 2x2 table."""
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    # the correlation of the paired answers, with Newcombe's correction when it is positive (without it a
    # table with no discordant pair gets an interval of zero width)
    concordance = a * d - b * c
    if concordance > 0:
        concordance = max(concordance - n / 2, 0.0)
    phi = concordance / math.sqrt(margins) if margins else 0.0
    theta = p1 - p2
    low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, theta - low), min(1.0, theta + high)


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # sum of C(n, i) / 2^n for i <= k, in logs (n may be thousands)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k + 1)
    ]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True, kw_only=True)
class PairedAccuracy:
    """Top-1 and top-5 of the reference and the artifact on the same labelled images, and what the pairing
    says about their difference (see the module doc). Fractions in [0, 1]."""

    images: int
    reference_top1: float
    artifact_top1: float
    reference_top5: float
    artifact_top5: float
    #: both right, only the reference right, only the artifact right, neither
    table: tuple[int, int, int, int]
    ci95: tuple[float, float]
    p_value: float

    @property
    def drop_top1(self) -> float:
        return self.reference_top1 - self.artifact_top1

    @property
    def reference_only(self) -> int:
        return self.table[1]

    @property
    def artifact_only(self) -> int:
        return self.table[2]

    def to_dict(self, dataset: str) -> dict:
        """The report's ``accuracy`` block."""
        return {
            "dataset": dataset,
            "images": self.images,
            "reference_top1": self.reference_top1,
            "artifact_top1": self.artifact_top1,
            "reference_top5": self.reference_top5,
            "artifact_top5": self.artifact_top5,
            "drop_top1": self.drop_top1,
            "ci95": list(self.ci95),
            "flips": {"reference_only": self.reference_only, "artifact_only": self.artifact_only},
            "p_value": self.p_value,
        }

    def describe(self) -> str:
        lo, hi = self.ci95
        return (
            f"top-1 {self.artifact_top1:.2%} vs reference {self.reference_top1:.2%} on {self.images} images: "
            f"drop {self.drop_top1 * 100:+.2f} points (95 % CI {lo * 100:+.2f} to {hi * 100:+.2f}), "
            f"{self.reference_only} lost / {self.artifact_only} gained, McNemar p = {self.p_value:.3g}"
        )


def topk_hits(topk: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each label is among the first ``k`` columns of ``topk`` (classes, best first)."""
    return (np.asarray(topk)[:, :k] == np.asarray(labels)[:, None]).any(axis=1)


def paired_accuracy(
    labels: np.ndarray, reference_topk: np.ndarray, artifact_topk: np.ndarray
) -> PairedAccuracy:
    """The paired comparison of two models' top-k answers (``(N, k)`` class indices, best first)."""
    labels = np.asarray(labels)
    n = len(labels)
    ref, art = topk_hits(reference_topk, labels, 1), topk_hits(artifact_topk, labels, 1)
    table = (
        int(np.sum(ref & art)),
        int(np.sum(ref & ~art)),
        int(np.sum(~ref & art)),
        int(np.sum(~ref & ~art)),
    )
    mean = lambda hits: float(hits.mean()) if n else 0.0  # noqa: E731
    return PairedAccuracy(
        images=n,
        reference_top1=mean(ref),
        artifact_top1=mean(art),
        reference_top5=mean(topk_hits(reference_topk, labels, TOP_K)),
        artifact_top5=mean(topk_hits(artifact_topk, labels, TOP_K)),
        table=table,
        ci95=paired_difference_ci(*table),
        p_value=mcnemar_exact(table[1], table[2]),
    )


def accuracy_checks(
    found: PairedAccuracy | None,
    *,
    artifact_top1: float,
    max_drop: float | None,
    min_accuracy: float | None,
    output: str = "logits",
) -> list[Check]:
    """The gate's records: the top-1 drop against ``max_drop`` (with the interval and p-value in its
    detail; none without a reference side: ``found`` None) and the artifact's top-1 against the
    ``min_accuracy`` floor."""
    checks = []
    if found is not None and max_drop is not None:
        checks.append(
            Check(
                kind=CheckKind.ACCURACY,
                output=output,
                metric="accuracy_drop",
                value=found.drop_top1,
                threshold=max_drop,
                passed=bool(found.drop_top1 <= max_drop),
                detail=found.describe(),
            )
        )
    if min_accuracy is not None:
        checks.append(
            Check(
                kind=CheckKind.ACCURACY,
                output=output,
                metric="top1",
                value=artifact_top1,
                threshold=min_accuracy,
                passed=bool(artifact_top1 >= min_accuracy),
                detail=f"top-1 {artifact_top1:.2%}, floor {min_accuracy:.2%}",
            )
        )
    return checks
