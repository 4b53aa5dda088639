"""``deploykit validate --dataset DIR --html FILE``: the accuracy page (:mod:`deploykit.workflows.dataset_page`)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from deploykit.core.io import atomic_write_text
from deploykit.workflows.dataset_page import FLIP_CSS, dataset_section
from deploykit.workflows.export.report import CSS
from deploykit.workflows.validate.report import ValidationReport


def accuracy_page(report: ValidationReport) -> str:
    """The whole page of ``report``'s dataset part."""
    outcome = report.dataset
    facts = outcome.facts()
    verdict = "<span class='pass'>PASS</span>" if report.passed else "<span class='fail'>FAIL</span>"
    head = (
        f"<h1>{verdict} {escape(report.artifact)} on {escape(facts['dataset'])}</h1>"
        f"<p>{escape(report.preset)}, {escape(str(report.precision))} ({escape(report.runtime)}): "
        f"{facts['images']} images in {facts['seconds']:.1f} s ({facts['images_per_second']:.1f} images/s); "
        f"reference: {'PyTorch FP32, recomputed' if report.facts.get('inputs') != 'reference' else 'recorded at export'}"
        "</p>"
    )
    parity_failed = [c for c in report.parity.checks if not c.passed]
    parity = "<span class='pass'>PASS</span>" if not parity_failed else "<span class='fail'>FAIL</span>"
    worst = f" ({escape(parity_failed[0].describe())})" if parity_failed else ""
    head += f"<p>output parity on the same images: {parity}{worst}</p>"
    body = dataset_section(
        found=outcome.found,
        paired=outcome.paired,
        checks=outcome.checks,
        classes=outcome.class_names,
        note=outcome.floor_only,
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>deploykit accuracy</title>"
        f"<style>{CSS}{FLIP_CSS}</style></head><body>{head}{body}</body></html>\n"
    )


def write_accuracy_page(report: ValidationReport, path: str | Path) -> None:
    atomic_write_text(path, accuracy_page(report))
