"""The CI gate cannot contradict itself: ``deploykit validate``'s exit code, text summary, ``--json`` and
``--junit`` are all rendered from one list of check records (parity metrics, baseline comparisons, the
``--locate`` finding), so for every kind of failed record they agree on the verdict and name the same checks.
"""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import small_config
from onnx import numpy_helper

import deploykit.workflows.validate.gate as validate_mod
from deploykit.cli import cli
from deploykit.validation.baseline import compare_baseline
from deploykit.validation.locate import LocateReport, ModuleDivergence
from deploykit.validation.metrics import Tolerances, compare_outputs
from deploykit.workflows.validate import ValidationReport

PRESET = "hvt_ti_1"


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _config_file(tmp_path: Path, fp16_tolerances: str | None = None, size: int = 64) -> Path:
    text = Path("export_configs/hvt.toml").read_text().replace("# image_size = 224", f"image_size = {size}")
    if fp16_tolerances is not None:
        text = text[: text.index("[tolerances.fp16]")] + fp16_tolerances
    path = tmp_path / "hvt.toml"
    path.write_text(text)
    return path


def _junit(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    suite = ET.parse(path).getroot()
    return suite, [case for case in suite if case.find("failure") is not None]


# ------------------------------------------------------------------------- a real FP16 artifact, end to end
@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory):
    from exporting import export_preset

    out = tmp_path_factory.mktemp("gate") / PRESET
    return export_preset(PRESET, out, small_config(PRESET, 64, exporter="torchscript"), fp16=True)


def _one_class_wins_everywhere(source: Path, target: Path) -> int:
    """``source`` with the classifier bias of one class raised just enough (+0.5) that it is the top-1 class
    of every validation image; that class is one the model rarely predicts. Returns the class."""
    from deploykit.models import create_model
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.ort_runner import OrtRunner
    from deploykit.validation.inputs import validation_batch

    images = validation_batch(create_model(PRESET, image_size=64).data_config, 64, 0, None).images
    logits = run_batched(OrtRunner(source), images, 32).astype(np.float64)
    rare = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1]) <= 2
    need = (logits.max(axis=1, keepdims=True) - logits).max(axis=0)  # raise that wins every image
    cls = int(np.argmin(np.where(rare, need, np.inf)))
    proto = onnx.load(str(source))
    bias = next(t for t in proto.graph.initializer if t.name == "head.fc.bias")
    values = numpy_helper.to_array(bias).copy()
    values[cls] += values.dtype.type(need[cls] + 0.5)
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(target))
    return cls


def test_fp16_failing_only_decisive_top1_fails_in_every_report(fp16_export, tmp_path):
    bad = tmp_path / "model.fp16.onnx"
    _one_class_wins_everywhere(fp16_export.out_dir / "model.fp16.onnx", bad)
    # every other gated metric passes: huge max_abs, any positive cosine, no top-5 gate
    config = _config_file(
        tmp_path, "[tolerances.fp16]\nmax_abs = 1e6\nmin_cosine = 0.0\nmin_top1 = 0.9\ntop1_margin = 0.01\n"
    )
    r = _cli("validate", bad, "--model", PRESET, "--config", config,
             "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")  # fmt: skip
    assert r.exit_code == 1, r.output

    report = json.loads((tmp_path / "r.json").read_text())
    failed = [c for c in report["checks"] if not c["passed"]]
    assert [(c["kind"], c["output"], c["metric"]) for c in failed] == [("parity", "logits", "top1_decisive")]
    assert failed[0]["value"] < 0.9 and failed[0]["threshold"] == 0.9
    assert {c["metric"] for c in report["checks"]} == {"nonfinite", "max_abs", "cosine_min", "top1_decisive"}
    assert report["passed"] is False and report["parity"]["passed"] is False
    assert [f["metric"] for f in report["parity"]["failures"]] == ["top1_decisive"]

    suite, failures = _junit(tmp_path / "r.xml")
    assert suite.get("failures") == "1" and suite.get("tests") == "4"
    assert [c.get("name") for c in failures] == ["top1_decisive"]
    assert "top1_decisive" in failures[0].find("failure").get("message")

    assert r.output.startswith(f"FAIL {bad} vs {PRESET} (fp16, onnxruntime[CPUExecutionProvider])")
    assert f"worst: {failed[0]['message']}" in r.output and "logits: top1_decisive = " in r.output


def test_clean_fp16_artifact_passes_in_every_report(fp16_export, tmp_path):
    r = _cli("validate", fp16_export.out_dir / "model.fp16.onnx", "--model", PRESET,
             "--config", _config_file(tmp_path), "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.startswith("PASS ") and len(r.output.splitlines()) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and all(c["passed"] for c in report["checks"])
    # the shipped fp16 tolerances gate decisive top-1 (top1_margin > 0), so that is the top-1 record
    assert [c["metric"] for c in report["checks"]] == ["nonfinite", "max_abs", "cosine_min", "top1_decisive"]
    suite, failures = _junit(tmp_path / "r.xml")
    assert suite.get("failures") == "0" and suite.get("tests") == "4" and failures == []


# -------------------------------------------------------------------- every failing record kind, rendered
REF = np.array(
    [
        [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
        [0.0, 4.0, 1.0, 2.0, 3.0, -1.0, 0.5, 1.5],
        [1.0, 0.0, 2.0, 5.0, 3.0, 4.0, -2.0, 0.5],
        [2.0, 3.0, 0.0, 1.0, 7.0, 0.5, 4.0, 5.0],
    ]
)
LOOSE = {"max_abs": 1e9, "min_cosine": 0.0, "min_top1": 0.0}


def _swap(ref: np.ndarray, row: int, a: int, b: int) -> np.ndarray:
    """``ref`` with the classes of rank ``a`` and ``b`` of one sample trading places."""
    cand = ref.copy()
    order = np.argsort(-ref[row])
    cand[row, [order[a], order[b]]] = cand[row, [order[b], order[a]]]
    return cand


def _with_nan(ref: np.ndarray) -> np.ndarray:
    cand = ref.copy()
    cand[2, 3] = np.nan
    return cand


#: case -> (candidate logits, tolerances, --locate (None: did not run; else whether it found a module),
#: the metrics a --baseline stores (None: no baseline), the (kind, metric) of every record that must fail)
CASES = {
    "nonfinite": (_with_nan(REF), LOOSE, None, None, [("parity", "nonfinite")]),
    "max_abs": (REF + 0.01, {**LOOSE, "max_abs": 1e-3}, False, None, [("parity", "max_abs")]),
    "cosine_min": (-REF, {**LOOSE, "min_cosine": 0.5}, None, None, [("parity", "cosine_min")]),
    "top1": (_swap(REF, 1, 0, 1), {**LOOSE, "min_top1": 0.99}, None, None, [("parity", "top1")]),
    "top1_decisive": (
        _swap(REF, 1, 0, 1),
        {**LOOSE, "min_top1": 0.99, "top1_margin": 0.5},
        False,
        None,
        [("parity", "top1_decisive")],
    ),
    "top5": (_swap(REF, 0, 4, 5), {**LOOSE, "min_top5": 0.99}, False, None, [("parity", "top5")]),
    "baseline": (REF + 1e-3, LOOSE, None, {"max_abs": 1e-5, "top1": 1.0}, [("baseline", "max_abs")]),
    "locate": (
        REF + 0.01,
        {**LOOSE, "max_abs": 1e-3},
        True,
        None,
        [("parity", "max_abs"), ("locate", "first_divergence")],
    ),
    "several": (
        _swap(REF + 0.01, 0, 4, 5),
        {**LOOSE, "max_abs": 1e-3, "min_top5": 0.99},
        True,
        {"max_abs": 1e-5, "top1": 1.0},
        [("parity", "max_abs"), ("parity", "top5"), ("locate", "first_divergence"), ("baseline", "max_abs")],
    ),
    "none": (REF + 1e-6, {**LOOSE, "max_abs": 1e-3, "min_top5": 0.99, "top1_margin": 0.1}, None, {}, []),
}


def _report(candidate: np.ndarray, tolerances: dict, located: bool | None) -> ValidationReport:
    tol = Tolerances(**tolerances)
    parity = compare_outputs({"logits": REF}, {"logits": candidate}, tol, stage="fp32 artifact")
    locate = None
    if located is not None:
        first = None
        if located:
            first = ModuleDivergence(
                module="blocks.1.mlp.fc2",
                module_type="Linear",
                stage="onnx",
                max_abs=0.3,
                max_rel=0.2,
                cosine_min=0.9,
            )
        thresholds = {"module_max_rel": 1e-3, "module_min_cosine": 0.9999}
        locate = LocateReport(
            stage="onnx", first=first, compared=40, unmatched=0, images=4, thresholds=thresholds
        )
    facts = {"sha256": "0" * 64, "images": len(REF), "inputs": "built-in", "weights": None}
    return ValidationReport(
        artifact="model.onnx",
        preset=PRESET,
        precision="fp32",
        runtime="onnxruntime[CPUExecutionProvider]",
        parity=parity,
        facts=facts,
        locate=locate,
    )


@pytest.mark.parametrize("kind", sorted(CASES))
def test_exit_code_text_json_and_junit_agree(kind, tmp_path, monkeypatch):
    candidate, tolerances, located, stored, expected = CASES[kind]
    report = _report(candidate, tolerances, located)
    # the real command (option parsing, baseline comparison, rendering, exit) on this report
    monkeypatch.setattr(validate_mod, "validate_artifact", lambda *a, **k: report)
    args = ["--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml"]
    if stored is not None:
        baseline = {"preset": PRESET, "precision": "fp32", "metrics": {"logits": stored}}
        (tmp_path / "b.json").write_text(json.dumps(baseline))
        args += ["--baseline", tmp_path / "b.json"]
    r = _cli("validate", "model.onnx", "--model", PRESET, "--config", _config_file(tmp_path), *args)
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    failed = report.failures
    assert [(c.kind, c.metric) for c in failed] == expected

    # exit code
    assert r.exit_code == (1 if failed else 0)
    # JSON
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is (not failed)
    assert [c for c in data["checks"] if not c["passed"]] == [c.to_dict() for c in failed]
    assert len(data["checks"]) == len(report.checks)
    # JUnit
    suite, cases = _junit(tmp_path / "r.xml")
    assert int(suite.get("failures")) == len(failed) == len(cases)
    assert int(suite.get("tests")) == len(report.checks) == len(suite)
    # text
    text = r.output
    assert text.startswith("FAIL " if failed else "PASS ")
    for check, case in zip(failed, cases, strict=True):
        assert check.metric in case.get("name") and case.find("failure").get("message") == check.describe()
        assert check.describe() in text  # every failed record has its line
        if check.kind != "locate":  # the locate line reads "first divergence: <module> ..."
            assert check.metric in text
    if located is False:  # --locate ran and found nothing: a passed record, and its line in the text
        assert [c.passed for c in report.checks if c.kind == "locate"] == [True]
        assert "no module output leaves the tolerance" in text
    if kind == "none":
        assert text == (
            f"PASS model.onnx vs {PRESET} (fp32, onnxruntime[CPUExecutionProvider]): max abs 1e-06, cosine min "
            "1.000000, top-1 100.0%, top-5 100.0% over 4 images\nbaseline: no metric regressed\n"
        )


def test_baseline_records_every_compared_metric():
    report = _report(REF + 1e-3, LOOSE, None)
    stored = {"max_abs": 1e-5, "cosine_min": 1.0, "top1": 1.0, "top5": 1.0}
    baseline = {"preset": PRESET, "precision": "fp32", "metrics": {"logits": stored}}
    checks = compare_baseline(report, baseline, 2.0)
    assert [(c.kind, c.metric, c.passed) for c in checks] == [
        ("baseline", "max_abs", False),  # 1e-3 > 2 x 1e-5
        ("baseline", "cosine_min", True),  # disagreement ~1e-8, within 2 x the 1e-6 floor
        ("baseline", "top1", True),
        ("baseline", "top5", True),
    ]
    assert checks[0].threshold == pytest.approx(2e-5) and checks[0].baseline == 1e-5
    assert "regressed from baseline" in checks[0].describe() and "within baseline" in checks[1].describe()

    nan = _report(_with_nan(REF), LOOSE, None)  # NaN metrics are never within a baseline
    assert not any(c.passed for c in compare_baseline(nan, baseline, 2.0))
