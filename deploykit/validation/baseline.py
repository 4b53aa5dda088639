"""``deploykit validate --baseline FILE``: parity metrics compared with a stored baseline, so CI notices
an artifact that got worse while still inside its tolerances (``--update-baseline`` writes the file).

Error metrics (``max_abs``, ``mean_abs``, ``max_rel``) regress when they exceed ``factor`` times their
baseline value; agreement metrics (``cosine_min``, ``cosine_mean``, ``top1``, ``top5``) when their
disagreement (``1 - value``) does. Baseline values below a floor count as the floor, so a change from
1e-7 to 3e-7 (noise between CPUs) is not a regression. Every compared metric is a
:class:`~deploykit.validation.metrics.Check` record of kind ``baseline`` (its ``threshold`` is the limit),
passed or not; a NaN/Inf value is never within its baseline.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import deploykit
from deploykit.core.errors import ArtifactError, ConfigError, display_path
from deploykit.core.io import atomic_write_text
from deploykit.core.schema import BASELINE, read_json, validate
from deploykit.validation.metrics import Check, CheckKind

ERROR_METRICS = ("max_abs", "mean_abs", "max_rel")
AGREEMENT_METRICS = ("cosine_min", "cosine_mean", "top1", "top5")
FLOOR = 1e-6


def regression_dict(check: Check) -> dict[str, Any]:
    """A failed baseline record as ``validate --json`` lists it under ``baseline_regressions``."""
    record = check.to_dict()
    keys = {
        "output": "output",
        "metric": "metric",
        "value": "value",
        "baseline": "baseline",
        "limit": "threshold",
    }
    return {**{key: record[field] for key, field in keys.items()}, "message": record["message"]}


def baseline_record(report) -> dict[str, Any]:
    """What a baseline file stores for a :class:`~deploykit.workflows.validate.ValidationReport`."""
    metrics = {
        name: {k: getattr(m, k) for k in (*ERROR_METRICS, *AGREEMENT_METRICS) if getattr(m, k) is not None}
        for name, m in report.parity.outputs.items()
    }
    return {
        "deploykit": deploykit.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "preset": report.preset,
        "precision": report.precision,
        "artifact_sha256": report.facts["sha256"],
        "images": report.facts["images"],
        "metrics": metrics,
    }


def write_baseline(report, path: str | Path) -> None:
    if not report.passed:
        raise ArtifactError("parity failed: a failing artifact is not written as a baseline")
    atomic_write_text(path, json.dumps(baseline_record(report), indent=2) + "\n")


def read_baseline(path: str | Path) -> dict[str, Any]:
    """The baseline file, checked against :data:`deploykit.core.schema.BASELINE` (preset, precision and
    per output an object of known metrics, each a finite number or null): anything else is one
    :class:`ArtifactError` line (exit 2), never a parity failure."""
    try:
        data = read_json(path, "a deploykit baseline")
    except FileNotFoundError:
        raise ArtifactError(
            f"baseline not found: {display_path(path)} (write one with --update-baseline)"
        ) from None
    return validate(data, BASELINE, path)


def compare_baseline(report, baseline: dict[str, Any], factor: float) -> list[Check]:
    """One ``baseline`` record per metric the baseline stores for an output of ``report``, passed or not."""
    for key in ("preset", "precision"):
        if baseline.get(key) != getattr(report, key):
            raise ConfigError(
                f"the baseline is for {key} {baseline.get(key)!r}, this artifact is {getattr(report, key)!r}"
            )
    checks = []
    for name, stored in baseline["metrics"].items():
        current = report.parity.outputs.get(name)
        if current is None:
            raise ConfigError(f"the baseline has output {name!r}, the artifact does not")
        for metric, base in stored.items():
            value = getattr(current, metric, None)
            if value is None or base is None:
                continue
            if metric in ERROR_METRICS:
                limit = factor * max(base, FLOOR)
                within = value <= limit
            else:  # agreement: compare the disagreement 1 - value
                limit = 1.0 - factor * max(1.0 - base, FLOOR)
                within = value >= limit
            checks.append(
                Check(
                    output=name,
                    metric=metric,
                    value=value,
                    threshold=limit,
                    passed=bool(within),
                    kind=CheckKind.BASELINE,
                    baseline=base,
                )
            )
    return checks
