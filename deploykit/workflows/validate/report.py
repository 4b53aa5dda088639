"""The gate's report: its records (parity, ``--locate``, baseline), rendered as text, JSON and JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.io import atomic_write_text
from deploykit.validation.baseline import regression_dict
from deploykit.validation.locate import LocateReport
from deploykit.validation.metrics import Check, CheckKind, ParityResult


def locate_check(locate: LocateReport) -> Check:
    """The ``--locate`` finding as a record: it fails when a module of the model diverges."""
    return Check(
        kind=CheckKind.LOCATE,
        output="modules",
        metric="first_divergence",
        value=None,
        threshold=None,
        passed=locate.first is None,
        detail=locate.describe(),
    )


@dataclass(kw_only=True)
class ValidationReport:
    """What ``deploykit validate`` found; :attr:`checks` are its records, and the verdict, the text, the JSON
    and the JUnit report are rendered from them alone."""

    artifact: str
    preset: str
    precision: str
    runtime: str
    parity: ParityResult
    facts: dict[str, Any]
    locate: LocateReport | None = None
    baseline: list[Check] | None = None  # None: no baseline compared
    #: ``--dataset``: accuracy on the user's labelled images (a DatasetOutcome); None: not asked for
    dataset: Any = None

    @property
    def checks(self) -> list[Check]:
        """Every record of the gate: parity, the accuracy on a dataset, the --locate finding, the baseline."""
        found = [locate_check(self.locate)] if self.locate is not None else []
        accuracy = self.dataset.checks if self.dataset is not None else []
        return [*self.parity.checks, *accuracy, *found, *(self.baseline or [])]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def _worst(self) -> Check | None:
        return max((c for c in self.failures if c.kind is CheckKind.PARITY), key=Check.excess, default=None)

    def summary(self) -> str:
        p = self.parity
        head = (
            f"{'PASS' if self.passed else 'FAIL'} {self.artifact} vs {self.preset} ({self.precision}, "
            f"{self.runtime}): max abs {p.worst_metric('max_abs'):.3g}, cosine min "
            f"{p.worst_metric('cosine_min'):.6f}, top-1 {p.worst_metric('top1'):.1%}, "
            f"top-5 {p.worst_metric('top5'):.1%} over {self.facts['images']} images"
        )
        lines = [head]
        ref = self.facts.get("reference")
        if ref:
            lines.append(f"reference: {ref['file']} (sha256 {ref['sha256'][:12]}), outputs {ref['outputs']}")
        checks, worst = self.checks, self._worst()
        if worst is not None:
            lines.append(f"worst: {worst.describe()}")
        lines += [
            f"also failed: {c.describe()}"
            for c in checks
            if c.kind is CheckKind.PARITY and not c.passed and c is not worst
        ]
        lines += self._dataset_lines()
        lines += [c.describe() for c in checks if c.kind is CheckKind.LOCATE]
        if self.baseline is not None:
            regressed = [c for c in checks if c.kind is CheckKind.BASELINE and not c.passed]
            lines += [f"baseline: {c.describe()}" for c in regressed] or ["baseline: no metric regressed"]
        return "\n".join(lines)

    def _dataset_lines(self) -> list[str]:
        if self.dataset is None:
            return []
        found, facts = self.dataset, self.dataset.facts()
        lines = [
            f"dataset: {facts['dataset']}, {facts['images']} images in {facts['seconds']:.1f} s "
            f"({facts['images_per_second']:.1f} images/s)"
        ]
        if found.floor_only:
            lines.append(f"accuracy: {found.floor_only}")
        for check in found.checks:
            lines.append(f"accuracy {'PASS' if check.passed else 'FAIL'}: {check.describe()}")
        if found.paired is not None and not any(c.metric == "accuracy_drop" for c in found.checks):
            lines.append(f"accuracy (not gated): {found.paired.describe()}")
        return lines

    def _dataset_dict(self) -> dict[str, Any]:
        if self.dataset is None:
            return {}
        found = self.dataset
        accuracy = found.paired.to_dict(str(found.dataset.source)) if found.paired is not None else None
        if accuracy is None:
            answers = found.found.answers["artifact"]
            labels = found.found.labels
            accuracy = {"dataset": str(found.dataset.source), "images": len(labels),
                        "artifact_top1": float((answers.top1 == labels).mean()) if len(labels) else 0.0}  # fmt: skip
        return {"accuracy": accuracy, "dataset": found.facts()}

    def to_dict(self) -> dict[str, Any]:
        worst = self._worst()
        checks = self.checks
        return {
            "artifact": self.artifact,
            "preset": self.preset,
            "precision": self.precision,
            "runtime": self.runtime,
            "passed": self.passed,
            "worst": worst.to_dict() if worst else None,
            "first_divergence": self.locate.first.to_dict() if self.locate and self.locate.first else None,
            **self.facts,
            "parity": self.parity.to_dict(),
            "locate": self.locate.to_dict() if self.locate else None,
            "baseline_regressions": None
            if self.baseline is None
            else [regression_dict(c) for c in checks if c.kind is CheckKind.BASELINE and not c.passed],
            "checks": [c.to_dict() for c in checks],
            **self._dataset_dict(),
        }


def write_json(report: ValidationReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def _junit_case(report: ValidationReport, check: Check) -> tuple[str, str]:
    """(classname, name) of a record's test case: ``<preset>.<precision>.<output>`` / ``<metric>`` for parity,
    ``....baseline`` / ``<output>.<metric>`` for the baseline, ``....locate`` / ``first_divergence``."""
    prefix = f"{report.preset}.{report.precision}"
    if check.kind is CheckKind.PARITY:
        return f"{prefix}.{check.output}", check.metric
    if check.kind is CheckKind.BASELINE:
        return f"{prefix}.baseline", f"{check.output}.{check.metric}"
    return f"{prefix}.{check.kind}", check.metric


def write_junit(report: ValidationReport, path: str | Path) -> None:
    """One JUnit test case per record of the gate, failing when the record failed, so CI dashboards show
    which check failed (and the failure count is the number of failed records)."""
    suite = ET.Element("testsuite", name=f"deploykit.validate.{report.preset}")
    checks = report.checks
    for check in checks:
        classname, name = _junit_case(report, check)
        case = ET.SubElement(suite, "testcase", classname=classname, name=name)
        ET.SubElement(case, "system-out").text = check.describe()
        if not check.passed:
            ET.SubElement(case, "failure", message=check.describe())
    suite.set("tests", str(len(checks)))
    suite.set("failures", str(sum(not c.passed for c in checks)))
    atomic_write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")
