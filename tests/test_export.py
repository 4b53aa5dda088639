"""Export + validate through the real pipeline (torch dynamo exporter, onnxsim, ONNX Runtime on CPU)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import FAMILY_CASES, small_config
from exporting import export_preset

from deploykit.cli import cli
from deploykit.core.errors import ParityError
from deploykit.core.onnx_io import node_attribute
from deploykit.validation import Tolerances


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_family_exports_and_matches_pytorch(exported, name):
    result = exported[name]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["passed"] and manifest["preset"] == name
    assert set(manifest["parity"]) == {"rewrites", "onnx", "simplified", "dynamic batch", "fp16"}
    for stage in (v for k, v in manifest["parity"].items() if k != "fp16"):
        logits = stage["outputs"]["logits"]
        assert logits["max_abs"] <= 1e-4 and logits["top1"] == 1.0 and logits["nonfinite"] == 0
    assert manifest["parity"]["dynamic batch"]["outputs"]["logits"]["samples"] == 1 + 3 + 8
    proto = onnx.load(str(result.onnx_path))
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    ops = {n.op_type for n in proto.graph.node}
    assert "Einsum" not in ops and "BatchNormalization" not in ops
    for node in proto.graph.node:
        if node.op_type in ("MaxPool", "AveragePool"):
            assert len(node_attribute(node, "kernel_shape")) == 2, f"1-D pool {node.name}"
    assert manifest["lint"]["violations"] == []
    assert not (result.out_dir / "model.onnx.data").exists()
    assert manifest["artifacts"]["model.onnx"]["sha256"] == sha(result.onnx_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["deploykit.preset"] == name and meta["deploykit.precision"] == "fp32"
    assert manifest["versions"]["torch"] and manifest["versions"]["onnxruntime"]


def test_validate_gate_passes_and_fails(exported, tmp_path):
    result = exported["hvt_s_4"]
    runner = CliRunner()
    cfg = tmp_path / "hvt.toml"
    cfg.write_text(
        Path("export_configs/hvt.toml").read_text().replace("# image_size = 224", "image_size = 128")
    )
    ok = runner.invoke(
        cli,
        [
            "validate",
            str(result.onnx_path),
            "--model",
            "hvt_s_4",
            "--config",
            str(cfg),
            "--json",
            str(tmp_path / "r.json"),
            "--junit",
            str(tmp_path / "r.xml"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    assert 'failures="0"' in (tmp_path / "r.xml").read_text()

    # a deliberately corrupted model: the classifier weights scaled by 1.5
    proto = onnx.load(str(result.onnx_path))
    biggest = max(proto.graph.initializer, key=lambda t: t.dims[0] if t.dims else 0)
    arr = onnx.numpy_helper.to_array(biggest) * 1.5
    biggest.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), biggest.name))
    bad = tmp_path / "corrupted.onnx"
    onnx.save(proto, str(bad))
    fail = runner.invoke(
        cli,
        [
            "validate",
            str(bad),
            "--model",
            "hvt_s_4",
            "--config",
            str(cfg),
            "--junit",
            str(tmp_path / "f.xml"),
        ],
    )
    assert fail.exit_code == 1, fail.output
    assert "FAIL" in fail.output and "worst: logits" in fail.output
    assert "<failure" in (tmp_path / "f.xml").read_text()

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(result.onnx_path.read_bytes()[:5000])
    bad_file = runner.invoke(cli, ["validate", str(truncated), "--model", "hvt_s_4", "--config", str(cfg)])
    assert bad_file.exit_code == 2 and "not a valid ONNX model" in bad_file.output
    # the artifact knows its resolution: validating it needs no --config, and one that contradicts it is refused
    recorded = runner.invoke(cli, ["validate", str(result.onnx_path)])
    assert recorded.exit_code == 0 and "PASS" in recorded.output, recorded.output
    at_224 = tmp_path / "at224.toml"
    at_224.write_text('family = "hvt"\n[export]\nimage_size = 224\n')
    wrong_shape = runner.invoke(cli, ["validate", str(result.onnx_path), "--config", str(at_224)])
    assert wrong_shape.exit_code == 2 and "does not fit" in wrong_shape.output, wrong_shape.output


@pytest.mark.slow
def test_cvt13_at_224_and_determinism(tmp_path):
    first = export_preset("cvt_13", tmp_path / "a")
    second = export_preset("cvt_13", tmp_path / "b")
    assert first.manifest["parity"]["dynamic batch"]["passed"]
    assert first.manifest["parity"]["dynamic batch"]["outputs"]["logits"]["max_abs"] <= 1e-4
    assert first.onnx_path.read_bytes() == second.onnx_path.read_bytes()  # byte-identical ONNX


def test_parity_failure_publishes_nothing_and_keeps_previous(tmp_path):
    out = tmp_path / "out"
    good = export_preset("hvt_ti_1", out, small_config("hvt_ti_1", 64, exporter="torchscript"))
    before = sha(good.onnx_path)
    impossible = small_config(
        "hvt_ti_1",
        64,
        exporter="torchscript",
        fp32=Tolerances(max_abs=0.0, min_cosine=1.0, min_top1=1.0, min_top5=1.0),
    )
    with pytest.raises(ParityError, match="nothing was published"):
        export_preset("hvt_ti_1", out, impossible, inputs_dir=None)
    assert sha(out / "model.onnx") == before
    assert (out / "rejected" / "model.onnx").is_file()
    assert not list(out.glob(".staging-*")) and not list(out.glob(".*.tmp"))


def test_interrupted_export_leaves_previous_artifact(tmp_path, monkeypatch):
    out = tmp_path / "out"
    good = export_preset("hvt_ti_1", out, small_config("hvt_ti_1", 64, exporter="torchscript"))
    before = sha(good.onnx_path)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("deploykit.transforms.lint.lint_model", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_preset("hvt_ti_1", out, small_config("hvt_ti_1", 64, exporter="torchscript"))
    assert sha(out / "model.onnx") == before
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "reference.npz",
        "report.html",
    ]


def _cli(*args):
    return CliRunner().invoke(cli, list(args))


def test_bad_inputs_exit_2_with_one_clear_line(tmp_path):
    out = tmp_path / "out"
    unknown = _cli("export", "cvt13", "--out", str(out))
    assert unknown.exit_code == 2 and "cvt_13" in unknown.output and "Traceback" not in unknown.output

    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text('family = "cvt"\n[export]\nopset = 11\n')
    r = _cli("export", "cvt", "--config", str(bad_cfg), "--out", str(out))
    assert r.exit_code == 2 and "opset" in r.output

    typo = tmp_path / "typo.toml"
    typo.write_text('family = "cvt"\n[batch]\nmaximum = 8\n')
    r = _cli("export", "cvt", "--config", str(typo), "--out", str(out))
    assert r.exit_code == 2 and "batch.maximum" in r.output

    r = _cli("export", "cvt", "--batch", "8,4,16", "--out", str(out))
    assert r.exit_code == 2 and "min <= opt <= max" in r.output

    r = _cli("export", "cvt", "--weights", str(tmp_path / "missing.pt"), "--out", str(out))
    assert r.exit_code == 2 and "not found" in r.output

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    r = _cli("export", "cvt", "--weights", str(corrupt), "--out", str(out))
    assert r.exit_code == 2 and "not a readable checkpoint" in r.output

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = _cli("export", "cvt", "--out", str(blocker / "sub"))
    assert r.exit_code == 2 and "not writable" in r.output

    r = _cli("inspect", str(tmp_path / "nope.onnx"))
    assert r.exit_code == 2 and "not found" in r.output
    assert not out.exists() or not list(out.iterdir())  # nothing half-written


def test_mismatched_weights_list_the_keys(tmp_path):
    import torch

    from deploykit.models import create_model

    state = create_model("hvt_ti_1", image_size=64).state_dict()
    state.pop("head.fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["head.fc.weight"] = torch.zeros(3, 3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        Path("export_configs/hvt.toml").read_text().replace("# image_size = 224", "image_size = 64")
    )
    r = _cli("export", "hvt_ti_1", "--config", str(cfg), "--weights", str(path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "missing keys: head.fc.bias" in r.output
    assert "unexpected keys: extra.weight" in r.output
    assert "head.fc.weight (3, 3)" in r.output


def test_weights_roundtrip_through_export(tmp_path):
    import torch

    from deploykit.models import create_model

    model = create_model("hvt_ti_1", image_size=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    result = export_preset(
        "hvt_ti_1", tmp_path / "o", small_config("hvt_ti_1", 64, exporter="torchscript"), weights=path
    )
    assert result.manifest["weights"]["sha256"] == sha(path)
    assert result.manifest["parity"]["dynamic batch"]["passed"]


def test_inspect_reports_graph_facts(exported, tmp_path):
    r = _cli("inspect", str(exported["cvt_13"].onnx_path), "--json", str(tmp_path / "i.json"))
    assert r.exit_code == 0
    assert "opsets {'ai.onnx': 20}" in r.output and "input  input: float ['batch', 3, 64, 64]" in r.output
    facts = json.loads((tmp_path / "i.json").read_text())
    assert facts["ops"]["Conv"] >= 3 and "Einsum" not in facts["ops"]
    assert facts["lint"]["violations"] == []


def test_dynamo_failure_falls_back_to_torchscript(tmp_path, monkeypatch):
    import deploykit.transforms.onnx_export as oe

    real = oe.torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated dynamo failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(oe.torch.onnx, "export", dynamo_breaks)
    result = export_preset("hvt_ti_1", tmp_path / "o", small_config("hvt_ti_1", 64))
    assert result.manifest["exporter"] == "torchscript"
    assert "simulated dynamo failure" in result.manifest["exporter_notes"][0]
    assert result.manifest["passed"]


def test_a_simplifier_that_changes_the_numbers_is_discarded(tmp_path, monkeypatch):
    import deploykit.workflows.export.stages as stages
    from deploykit.transforms.simplify import Simplifier, SimplifyResult

    def wrong_simplifier(proto):
        broken = onnx.ModelProto()
        broken.CopyFrom(proto)
        bias = next(t for t in broken.graph.initializer if t.name == "head.fc.bias")
        bias.CopyFrom(
            onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(1.0), bias.name)
        )
        nodes = len(proto.graph.node)
        return broken, SimplifyResult(tool=Simplifier.ONNXSIM, nodes_before=nodes, nodes_after=nodes)

    monkeypatch.setattr(stages, "simplify_onnx", wrong_simplifier)
    result = export_preset("hvt_ti_1", tmp_path / "o", small_config("hvt_ti_1", 64, exporter="torchscript"))
    manifest = result.manifest
    assert manifest["passed"] and "simplified" not in manifest["parity"]
    assert manifest["simplify"]["tool"] == "none"
    assert "onnxsim output failed parity (logits: max_abs" in manifest["simplify"]["notes"][-1]
    assert manifest["parity"]["dynamic batch"]["outputs"]["logits"]["max_abs"] < 1e-4  # the exported graph
