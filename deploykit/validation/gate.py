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
import onnx

from deploykit.errors import ArtifactError
from deploykit.export.config import ExportConfig, default_config
from deploykit.export.io import atomic_write_text, sha256_file
from deploykit.models import get_preset
from deploykit.runtime.base import run_batched
from deploykit.runtime.predictor import ENGINE_SUFFIXES, ONNX_SUFFIXES
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.validation.inputs import validation_batch
from deploykit.validation.metrics import ParityResult, compare_outputs


@dataclass
class ValidationReport:
    artifact: str
    preset: str
    precision: str
    runtime: str
    parity: ParityResult
    facts: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def summary(self) -> str:
        p = self.parity
        head = (
            f"{'PASS' if self.passed else 'FAIL'} {self.artifact} vs {self.preset} ({self.precision}, "
            f"{self.runtime}): max abs {p.worst_metric('max_abs'):.3g}, cosine min "
            f"{p.worst_metric('cosine_min'):.6f}, top-1 {p.worst_metric('top1'):.1%}, "
            f"top-5 {p.worst_metric('top5'):.1%} over {self.facts['images']} images"
        )
        worst = p.worst()
        return head if worst is None else f"{head}\nworst: {worst.describe()}"

    def to_dict(self) -> dict[str, Any]:
        worst = self.parity.worst()
        return {
            "artifact": self.artifact,
            "preset": self.preset,
            "precision": self.precision,
            "runtime": self.runtime,
            "passed": self.passed,
            "worst": worst.to_dict() if worst else None,
            **self.facts,
            "parity": self.parity.to_dict(),
        }


def onnx_precision(proto: onnx.ModelProto) -> str:
    """``fp16`` when the graph says so (deploykit metadata) or most weights are half precision."""
    meta = {p.key: p.value for p in proto.metadata_props}
    if "deploykit.precision" in meta:
        return meta["deploykit.precision"]
    half = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return "fp16" if half > len(proto.graph.initializer) / 2 else "fp32"


def _onnx_runner(path: Path, expected: tuple[int, ...]):
    from deploykit.export.onnx_export import load_onnx
    from deploykit.runtime.ort_runner import OrtRunner

    proto = load_onnx(path)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or tuple(dims[1:]) != tuple(expected):
        raise ArtifactError(
            f"{path}: input shape {dims} does not fit the model's (batch, {', '.join(map(str, expected))})"
        )
    return OrtRunner(path), onnx_precision(proto)


def validate_artifact(
    artifact: str | Path,
    preset: str,
    weights: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    weights_format: str | None = None,
) -> ValidationReport:
    from deploykit.export.pipeline import build_model

    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    spec = get_preset(preset)
    config = config or default_config(spec.family)
    model, weights_info = build_model(spec.name, config.image_size, weights, config.seed, weights_format)
    if path.suffix in ONNX_SUFFIXES:
        runner, precision = _onnx_runner(path, tuple(model.input_size))
        runtime = runner.name
    elif path.suffix in ENGINE_SUFFIXES:
        from deploykit.engine.runner import TensorRTRunner

        runner = TensorRTRunner(path)
        precision, runtime = runner.precision, runner.name
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
    return ValidationReport(str(path), spec.name, precision, runtime, parity, facts)


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
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    atomic_write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")
