"""When parity fails, say where: ``validate --locate`` and rejected exports name the first diverging
``nn.Module`` (for every family, with a planted defect in one block: a perturbed ONNX initializer, and a
deliberately wrong rewrite), the FP16 sensitivity step uses the same module check, ``--baseline`` catches
a regression inside the tolerances, and ``report.html`` is written beside the manifest."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FAMILY_CASES, small_config
from exporting import export_preset
from onnx import numpy_helper

import deploykit.transforms.rewrites as rewrites
from deploykit.cli import cli
from deploykit.core.config import BatchProfile
from deploykit.core.errors import ParityError
from deploykit.core.scopes import SCOPES_KEY, module_outputs, node_scopes
from deploykit.models import get_preset
from deploykit.transforms.onnx_export import export_onnx

BLOCK = re.compile(r"^(.*blocks\.(\d+))\.")


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _config_file(tmp_path: Path, name: str) -> Path:
    family = get_preset(name).family
    path = tmp_path / f"{family}.toml"
    text = Path(f"export_configs/{family}.toml").read_text()
    path.write_text(text.replace("# image_size = 224", f"image_size = {FAMILY_CASES[name]}"))
    return path


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _middle_block_initializer(proto: onnx.ModelProto) -> onnx.TensorProto:
    """An initializer (consumed by the graph) of the middle transformer block."""
    used = {i for n in proto.graph.node for i in n.input}
    by_block = {}
    for t in proto.graph.initializer:
        m = BLOCK.match(t.name)
        if m and t.name in used and len(t.dims) >= 1:
            by_block.setdefault(m.group(1), t)
    blocks = sorted(by_block, key=_natural)
    return by_block[blocks[len(blocks) // 2]]


def test_scopes_survive_simplification(exported):
    """The simplified graph keeps a module scope on most nodes and finds most modules' outputs."""
    for name, result in exported.items():
        proto = onnx.load(str(result.onnx_path))
        scoped = sum(1 for n in proto.graph.node if any(p.key == SCOPES_KEY for p in n.metadata_props))
        assert scoped >= 0.8 * len(proto.graph.node), (name, scoped, len(proto.graph.node))
        modules = {m.module for m in module_outputs(proto)}
        assert len(modules) >= 50 and any(BLOCK.match(m + ".") for m in modules), name


def test_module_outputs_of_a_small_graph():
    class Inner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.fc(x)) * 2

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Inner(), Inner()

        def forward(self, x):
            return self.b(self.a(x.flatten(1))) + 1

    proto = export_onnx(Outer().eval(), (1, 2, 2), 18, "torchscript")
    assert all(node_scopes(n) for n in proto.graph.node if n.op_type in ("Gemm", "Relu", "Mul"))
    order = [m.module for m in module_outputs(proto)]
    # execution order, a child before the module it belongs to
    assert order.index("a.fc") < order.index("a") < order.index("b.fc") < order.index("b")


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_locate_names_the_block_of_a_perturbed_initializer(exported, tmp_path, name):
    proto = onnx.load(str(exported[name].onnx_path))
    init = _middle_block_initializer(proto)
    block = BLOCK.match(init.name).group(1)
    arr = numpy_helper.to_array(init).copy()
    noise = np.random.default_rng(0).standard_normal(arr.shape).astype(arr.dtype)
    init.CopyFrom(numpy_helper.from_array(arr + noise * (arr.std() + 0.05), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    out = tmp_path / "r.json"
    r = _cli("validate", bad, "--model", name, "--config", _config_file(tmp_path, name), "--locate",
             "--json", out, "--junit", tmp_path / "r.xml")  # fmt: skip
    assert r.exit_code == 1, r.output
    first = json.loads(out.read_text())["first_divergence"]
    assert first["module"].startswith(block + "."), (init.name, first)  # that block, never an earlier one
    assert first["stage"] == "onnx" and first["onnx_tensor"] and first["max_rel"] > 1e-3
    assert f"first divergence: {first['module']}" in r.output
    assert "first_divergence" in (tmp_path / "r.xml").read_text()


def _wrong_rewrite_in(block: str):
    """apply_rewrites, but the rewritten model's first weight layer in ``block`` computes something else."""
    real = rewrites.apply_rewrites

    def wrong(model):
        rewritten, records = real(model)
        layer = next(
            m
            for n, m in rewritten.named_modules()
            if n.startswith(block + ".") and isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
        )
        with torch.no_grad():
            layer.weight.mul_(1.5)
        return rewritten, records

    return wrong


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_a_wrong_rewrite_is_located_in_its_block(exported, tmp_path, monkeypatch, name):
    proto = onnx.load(str(exported[name].onnx_path))
    block = BLOCK.match(_middle_block_initializer(proto).name).group(1)
    monkeypatch.setattr(rewrites, "apply_rewrites", _wrong_rewrite_in(block))
    out = tmp_path / "out"
    config = small_config(name, FAMILY_CASES[name], batch=BatchProfile(min=1, opt=1, max=8))
    with pytest.raises(ParityError, match="first divergence") as info:
        export_preset(name, out, config)
    assert "rewrites" in str(info.value)
    rejected = out / "rejected"
    located = json.loads((rejected / "locate.json").read_text())
    assert located["stage"] == "rewrites" and located["first_divergence"]["module"].startswith(block + ".")
    manifest = json.loads((rejected / "manifest.json").read_text())
    assert manifest["first_divergence"] == located["first_divergence"] and manifest["passed"] is False
    assert "First divergence" in (rejected / "report.html").read_text()
    assert not (out / "model.onnx").exists()

    # the same defect seen by validate --locate (the rewrites are still wrong in this process)
    r = _cli("validate", rejected / "model.onnx", "--model", name, "--config", _config_file(tmp_path, name),
             "--locate", "--json", tmp_path / "v.json")  # fmt: skip
    assert r.exit_code == 1, r.output
    first = json.loads((tmp_path / "v.json").read_text())["first_divergence"]
    assert first["stage"] == "rewrites" and first["module"].startswith(block + ".")


def test_clean_artifact_with_locate_passes_without_an_extra_run(exported, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("locate ran for a passing artifact")

    # validate imports it when it needs it (the torch-free path never does)
    monkeypatch.setattr("deploykit.workflows.locate.locate_failure", must_not_run)
    from deploykit.runtime.ort_runner import OrtRunner

    runs = []
    real_run = OrtRunner.run
    monkeypatch.setattr(OrtRunner, "run", lambda self, x: runs.append(len(x)) or real_run(self, x))
    name = "hvt_s_4"
    r = _cli("validate", exported[name].onnx_path, "--model", name, "--config", _config_file(tmp_path, name),
             "--locate", "--json", tmp_path / "r.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert sum(runs) == 16  # one pass over the validation images, nothing more
    assert json.loads((tmp_path / "r.json").read_text())["first_divergence"] is None


# ---------------------------------------------------------------------------------------------- FP16
class Rescale(torch.nn.Module):
    """``up`` scales by ~1e-6 and ``down`` back: exact in FP32; in FP16 the weights of ``up`` are
    subnormal (spacing 6e-8) and lose ~20 % of their value. (ONNX Runtime's CPU kernels compute FP16
    Add/MatMul chains in FP32 between the graph's FP16 tensors, so the drift has to be in the weights.)"""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(8, 8, bias=False)
        self.down = torch.nn.Linear(8, 8, bias=False)
        with torch.no_grad():
            self.up.weight.mul_(1e-6)
            self.down.weight.copy_(torch.eye(8) * 0.25e6)

    def forward(self, x):
        return self.down(self.up(x))


class Drifting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.cancel = Rescale()
        self.last = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.last(self.cancel(self.first(x.flatten(1))))


def test_fp16_module_check_keeps_only_the_drifting_module_fp32():
    from deploykit.core.scopes import module_nodes
    from deploykit.runtime.ort_runner import OrtRunner
    from deploykit.transforms.fp16 import make_fp16
    from deploykit.validation.metrics import Tolerances

    torch.manual_seed(0)
    model = Drifting().eval()
    proto = export_onnx(model, (2, 2, 2), 18, "torchscript")
    images = np.random.default_rng(0).standard_normal((64, 2, 2, 2)).astype(np.float32)
    reference = model(torch.from_numpy(images)).detach().numpy()

    def passes(logits):
        return bool(np.abs(logits - reference).max() < 1e-2)

    tol = Tolerances(
        max_abs=0.5,
        min_cosine=0.999,
        min_top1=0.99,
        min_top5=None,
        top1_margin=0.01,
        module_max_rel=0.05,
        module_min_cosine=0.999,
    )
    converted, report = make_fp16(proto, images, reference, passes, tol=tol)
    reasons = {k["reason"] for k in report.kept_fp32}
    assert any(r.startswith("module check: cancel.up drifts in FP16") for r in reasons), reasons
    assert report.segments_checked == 0 and report.modules_checked >= 1  # solved before segments
    kept = {k["node"] for k in report.kept_fp32}
    assert kept == module_nodes(proto, "cancel") and not kept & module_nodes(proto, "first")
    assert passes(OrtRunner(converted.SerializeToString()).run(images))


def test_locate_on_an_fp16_artifact(exported, tmp_path):
    name = "hvt_s_4"
    proto = onnx.load(str(exported[name].out_dir / "model.fp16.onnx"))
    init = _middle_block_initializer(proto)
    block = BLOCK.match(init.name).group(1)
    arr = numpy_helper.to_array(init).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal(arr.shape).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array((arr + noise * (arr.std() + 0.5)).astype(np.float16), init.name))
    bad = tmp_path / "bad.fp16.onnx"
    onnx.save(proto, str(bad))
    r = _cli("validate", bad, "--model", name, "--config", _config_file(tmp_path, name), "--locate",
             "--json", tmp_path / "r.json")  # fmt: skip
    assert r.exit_code == 1, r.output
    first = json.loads((tmp_path / "r.json").read_text())["first_divergence"]
    assert first["stage"] == "fp16" and first["module"].startswith(block + "."), first


# ------------------------------------------------------------------------------------------ baseline
def test_baseline_passes_unchanged_and_names_a_regressed_metric(exported, tmp_path):
    name = "hvt_s_4"
    config = _config_file(tmp_path, name)
    baseline = tmp_path / "baseline.json"
    artifact = exported[name].onnx_path
    r = _cli(
        "validate", artifact, "--model", name, "--config", config, "--baseline", baseline, "--update-baseline"
    )
    assert r.exit_code == 0 and baseline.is_file(), r.output
    stored = json.loads(baseline.read_text())
    assert stored["preset"] == name and stored["metrics"]["logits"]["max_abs"] < 1e-4
    r = _cli(
        "validate",
        artifact,
        "--model",
        name,
        "--config",
        config,
        "--baseline",
        baseline,
        "--junit",
        tmp_path / "a.xml",
    )
    assert r.exit_code == 0 and "no metric regressed" in r.output, r.output

    # degraded inside the tolerances: the classifier bias shifted by 3e-5 (max abs 1e-4 still holds)
    proto = onnx.load(str(artifact))
    bias = next(t for t in proto.graph.initializer if t.name == "head.fc.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(3e-5), bias.name))
    worse = tmp_path / "worse.onnx"
    onnx.save(proto, str(worse))
    r = _cli("validate", worse, "--model", name, "--config", config, "--baseline", baseline,
             "--json", tmp_path / "w.json", "--junit", tmp_path / "w.xml")  # fmt: skip
    assert r.exit_code == 1, r.output
    report = json.loads((tmp_path / "w.json").read_text())
    assert report["parity"]["passed"] and not report["passed"]  # parity holds; the baseline does not
    regressed = {(x["output"], x["metric"]) for x in report["baseline_regressions"]}
    assert ("logits", "max_abs") in regressed and "baseline: logits: max_abs" in r.output
    assert (
        "baseline" in (tmp_path / "w.xml").read_text()
        and 'failures="0"' not in (tmp_path / "w.xml").read_text()
    )

    missing = _cli(
        "validate", artifact, "--model", name, "--config", config, "--baseline", tmp_path / "nope.json"
    )
    assert missing.exit_code == 2 and "baseline not found" in missing.output
    no_file = _cli("validate", artifact, "--model", name, "--config", config, "--update-baseline")
    assert no_file.exit_code == 2 and "--update-baseline needs --baseline" in no_file.output
    other = _cli("validate", exported[name].out_dir / "model.fp16.onnx", "--model", name, "--config", config,
                 "--baseline", baseline)  # fmt: skip
    assert other.exit_code == 2 and "precision" in other.output


# -------------------------------------------------------------------------------------------- report
def test_report_html_beside_the_manifest(exported, monkeypatch):
    result = exported["cvt_13"]
    html = (result.out_dir / "report.html").read_text()
    for section in (
        "Parity per stage",
        "Per image",
        "FP16: FP32 islands and why",
        "TensorRT parser lint",
        "Timings",
    ):
        assert section in html
    assert "data:image/png;base64," in html or "pip install 'deploykit[plot]'" in html
    assert html.count("<tr>") > 20 and "http" not in html.replace("http://www.w3", "")  # self-contained

    import builtins

    from deploykit.workflows.export.report import render_report

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    plain = render_report(result.manifest)
    assert (
        "data:image/png" not in plain
        and "Parity per stage" in plain
        and "pip install 'deploykit[plot]'" in plain
    )
