"""``deploykit validate``: the CI gate. Re-runs the PyTorch model and the artifact on the same inputs and
checks parity against the family's tolerances for the artifact's precision.

Exit codes (set by the CLI): 0 parity holds, 1 parity fails, 2 bad usage or bad input.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES
from deploykit.core.config import ExportConfig, default_config
from deploykit.core.errors import ArtifactError
from deploykit.core.io import atomic_write_text, sha256_file
from deploykit.models import get_preset
from deploykit.runtime.base import run_batched
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.validation.baseline import Regression
from deploykit.validation.inputs import validation_batch
from deploykit.validation.locate import LocateReport
from deploykit.validation.metrics import ParityResult, compare_outputs
from deploykit.workflows.locate import locate_failure


@dataclass
class ValidationReport:
    artifact: str
    preset: str
    precision: str
    runtime: str
    parity: ParityResult
    facts: dict[str, Any]
    locate: LocateReport | None = None
    regressions: list[Regression] | None = None  # None: no baseline compared

    @property
    def passed(self) -> bool:
        return self.parity.passed and not self.regressions

    def summary(self) -> str:
        p = self.parity
        head = (
            f"{'PASS' if self.passed else 'FAIL'} {self.artifact} vs {self.preset} ({self.precision}, "
            f"{self.runtime}): max abs {p.worst_metric('max_abs'):.3g}, cosine min "
            f"{p.worst_metric('cosine_min'):.6f}, top-1 {p.worst_metric('top1'):.1%}, "
            f"top-5 {p.worst_metric('top5'):.1%} over {self.facts['images']} images"
        )
        lines = [head]
        worst = p.worst()
        if worst is not None:
            lines.append(f"worst: {worst.describe()}")
        if self.locate is not None:
            lines.append(self.locate.describe())
        if self.regressions is not None:
            lines += [f"baseline: {r.describe()}" for r in self.regressions] or [
                "baseline: no metric regressed"
            ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        worst = self.parity.worst()
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
            if self.regressions is None
            else [r.to_dict() for r in self.regressions],
        }


def _onnx_runner(path: Path, expected: tuple[int, ...]):
    from deploykit.core.onnx_io import load_onnx, onnx_precision
    from deploykit.runtime.ort_runner import OrtRunner

    proto = load_onnx(path)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or tuple(dims[1:]) != tuple(expected):
        raise ArtifactError(
            f"{path}: input shape {dims} does not fit the model's (batch, {', '.join(map(str, expected))})"
        )
    return OrtRunner(path), onnx_precision(proto), proto


def _engine_source(path: Path):
    """The ONNX file an engine was built from, when it is beside the engine (for --locate)."""
    from deploykit.core.onnx_io import load_onnx
    from deploykit.engine.runner import read_sidecar

    source = path.parent / str(read_sidecar(path).get("source_onnx", {}).get("file", ""))
    return load_onnx(source) if source.is_file() and source.suffix == ".onnx" else None


def validate_artifact(
    artifact: str | Path,
    preset: str,
    weights: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    weights_format: str | None = None,
    locate: bool = False,
) -> ValidationReport:
    """Parity of ``artifact`` against the PyTorch preset; with ``locate``, a failure is traced to the first
    diverging module (no extra work when parity holds)."""
    from deploykit.workflows.pipeline import build_model

    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    spec = get_preset(preset)
    config = config or default_config(spec.family)
    model, weights_info = build_model(spec.name, config.image_size, weights, config.seed, weights_format)
    if path.suffix in ONNX_SUFFIXES:
        runner, precision, graph = _onnx_runner(path, tuple(model.input_size))
        runtime = runner.name
    elif path.suffix in ENGINE_SUFFIXES:
        from deploykit.engine.runner import TensorRTRunner

        runner = TensorRTRunner(path)
        precision, runtime, graph = runner.precision, runner.name, None
    else:
        raise ArtifactError(
            f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
        )
    count = config.num_images if precision == "fp32" else max(config.num_images, 64)
    batch = validation_batch(model.data_config, count, config.seed, inputs_dir)
    reference = run_batched(TorchRunner(model), batch.images, config.batch.max)
    candidate = run_batched(runner, batch.images, config.batch.max)
    parity = compare_outputs(
        {"logits": reference},
        {"logits": candidate.astype(np.float32)},
        config.tolerances(precision),
        stage=f"{precision} artifact",
    )
    facts = {
        "sha256": sha256_file(path),
        "images": len(batch),
        "inputs": str(inputs_dir) if inputs_dir else "built-in",
        "weights": weights_info.to_dict() if weights_info else None,
    }
    report = ValidationReport(str(path), spec.name, precision, runtime, parity, facts)
    if locate and not parity.passed:
        report.locate = _locate(model, path, graph, precision, batch.images, reference, candidate, config)
    return report


def _locate(model, path: Path, graph, precision, images, reference, candidate, config) -> LocateReport:
    stage = "fp16" if precision == "fp16" else "onnx"
    if path.suffix in ENGINE_SUFFIXES:
        graph, stage = _engine_source(path), "onnx (the engine's source)"
    report = locate_failure(
        model, images, reference, candidate, config.fp32, config.tolerances(precision), graph, stage
    )
    if path.suffix in ENGINE_SUFFIXES and report.first is None:
        report.stage = "engine"
        report.note = (
            "the engine's source ONNX matches PyTorch module by module: the divergence comes from the "
            "TensorRT build (an engine exposes no intermediate tensors)"
            if graph is not None
            else "the engine's source ONNX is not beside it; an engine exposes no intermediate tensors"
        )
    return report


def write_json(report: ValidationReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_junit(report: ValidationReport, path: str | Path) -> None:
    """One JUnit test case per checked metric of every output, so CI dashboards show which one failed."""
    p = report.parity
    tol = p.tolerances
    checks = [
        ("nonfinite", None),
        ("max_abs", tol.max_abs),
        ("cosine_min", tol.min_cosine),
        ("top1", tol.min_top1),
    ]
    if tol.min_top5 is not None:
        checks.append(("top5", tol.min_top5))
    suite = ET.Element("testsuite", name=f"deploykit.validate.{report.preset}")
    failures = 0
    for output, metrics in p.outputs.items():
        for metric, threshold in checks:
            case = ET.SubElement(
                suite, "testcase", classname=f"{report.preset}.{report.precision}.{output}", name=metric
            )
            value = getattr(metrics, metric)
            ET.SubElement(case, "system-out").text = f"value={value} threshold={threshold}"
            failed = [
                f
                for f in p.failures
                if f.output == output and (f.metric == metric or f.metric == "nonfinite")
            ]
            if failed and (metric == "nonfinite" or failed[0].metric == metric):
                failures += 1
                ET.SubElement(case, "failure", message=failed[0].describe())
    if report.locate is not None:
        case = ET.SubElement(
            suite, "testcase", classname=f"{report.preset}.{report.precision}.locate", name="first_divergence"
        )
        ET.SubElement(case, "system-out").text = report.locate.describe()
        if report.locate.first is not None:
            failures += 1
            ET.SubElement(case, "failure", message=report.locate.describe())
    for regression in report.regressions or []:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{report.preset}.{report.precision}.baseline",
            name=f"{regression.output}.{regression.metric}",
        )
        failures += 1
        ET.SubElement(case, "failure", message=regression.describe())
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    atomic_write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")
