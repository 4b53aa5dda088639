"""``deploykit doctor``: the machine's components (also with torch and ONNX Runtime unimportable), the
providers that really run (a silent CPU fallback caught), fake Jetsons (an AGX Orin on JetPack 6.2, an AGX
Thor on JetPack 7), and export folders whose files run or not here, with TensorRT fakes (tests/fakes.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import exported_like_onnx, fake_engine_file, install_fakes
from test_device import THOR_RELEASE, fake_jetson, nvpmodel, orin

from deploykit.cli import cli
from deploykit.engine import device
from deploykit.runtime import providers
from deploykit.workflows.doctor import Probes, Status, doctor

COMPONENTS = ["python", "deploykit", "export", "onnxruntime", "tensorrt", "cuda", "gpu", "jetson", "triton"]


def _no_tensorrt(monkeypatch) -> None:
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)


def test_the_probe_model_is_what_onnx_builds():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7, producer_name="deploykit"
    )
    onnx.checker.check_model(onnx.load_from_string(providers.PROBE_MODEL), full_check=True)
    assert model.SerializeToString() == providers.PROBE_MODEL


def test_a_silent_cpu_fallback_is_caught(monkeypatch):
    class Session:
        def __init__(self, model, options, providers):
            self.asked = providers

        def get_providers(self):  # what ONNX Runtime does when the CUDA libraries do not load
            return ["CPUExecutionProvider"]

        def run(self, outputs, feeds):
            return [feeds["x"] * 2]

    fake = types.SimpleNamespace(
        SessionOptions=lambda: types.SimpleNamespace(),
        InferenceSession=Session,
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        __version__="1.99.0",
    )
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    cuda, cpu = providers.probe_providers()
    assert not cuda.runs and "fell back to CPUExecutionProvider" in cuda.reason and cpu.runs
    component = doctor(probes=Probes(root=Path("/nonexistent"))).component("onnxruntime")
    assert component.status is Status.OK and component.details["runs"] == ["CPUExecutionProvider"]
    assert "listed but not running: CUDAExecutionProvider" in component.summary


def test_doctor_on_a_fake_orin_and_thor(tmp_path: Path):
    run = nvpmodel("NV Power Mode: MAXN\n0\n")
    jetson = doctor(probes=Probes(root=orin(tmp_path), run=run)).component("jetson")
    assert jetson.status is Status.OK
    assert jetson.summary == (
        "NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.3 (JetPack 6.2), MAXN, clocks locked"
    )
    root = fake_jetson(tmp_path / "thor", model="NVIDIA Jetson AGX Thor Developer Kit", release=THOR_RELEASE)
    thor = doctor(probes=Probes(root=root, run=run)).to_dict()["components"]["jetson"]
    assert thor["model"] == "NVIDIA Jetson AGX Thor Developer Kit" and thor["l4t"] == "38.2.0"
    assert thor["jetpack"] == "7.0" and thor["power_mode"] == "MAXN" and thor["clocks_locked"] is None
    off = doctor(probes=Probes(root=tmp_path / "pc")).component("jetson")
    assert off.status is Status.NOT_APPLICABLE


def test_doctor_without_torch_and_onnxruntime(tmp_path: Path, monkeypatch):
    for name in ("torch", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    _no_tensorrt(monkeypatch)
    report = doctor(json_out=tmp_path / "doctor.json", probes=Probes(root=tmp_path))
    assert report.component("export").status is Status.MISSING
    assert report.component("onnxruntime").status is Status.MISSING
    assert report.exit_code == 3  # neither ONNX Runtime nor TensorRT runs a model here
    written = json.loads((tmp_path / "doctor.json").read_text())
    assert list(written["components"]) == COMPONENTS and written["exit_code"] == 3
    assert all(
        c["status"] in ("ok", "missing", "not applicable", "error") for c in written["components"].values()
    )
    assert written["components"]["export"]["torch"] is None and written["folder"] is None
    # the command line: the same report, exit 3; an export folder's ONNX file needs ONNX Runtime
    folder = tmp_path / "export"
    folder.mkdir()
    exported_like_onnx(folder / "model.onnx")
    out = tmp_path / "folder.json"
    result = CliRunner().invoke(cli, ["doctor", str(folder), "--json", str(out)])
    assert result.exit_code == 3, result.output
    assert "model.onnx: does not run here - ONNX Runtime is not importable" in result.output
    (check,) = json.loads(out.read_text())["folder"]["files"]
    assert not check["runs"] and check["next"].startswith("pip install ")


def test_a_folder_that_runs_here(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "10.3.0.26")
    monkeypatch.setattr(device, "ROOT", tmp_path / "root")
    folder = tmp_path / "export"
    folder.mkdir()
    exported_like_onnx(folder / "model.onnx")
    exported_like_onnx(folder / "model.fp16.onnx")
    report = doctor(folder)
    assert [c.name for c in report.components] == COMPONENTS
    assert all(report.component(n).ok for n in ("onnxruntime", "tensorrt", "cuda", "gpu"))
    assert [(f.file, f.runs, f.how) for f in report.files] == [
        ("model.fp16.onnx", True, "onnxruntime CPUExecutionProvider"),
        ("model.onnx", True, "onnxruntime CPUExecutionProvider"),
    ]
    # TensorRT and a GPU are here but no engine: build one from the FP16 graph, then check it
    assert report.next == (
        f"deploykit build {folder / 'model.fp16.onnx'}",
        f"deploykit validate {folder / 'model.fp16.onnx'}",
    )
    assert report.exit_code == 0
    engine = fake_engine_file(folder, "10.3.0.26")
    sidecar = json.loads((folder / "model.engine.json").read_text())
    sidecar |= {"tensorrt": "10.3.0.26", "gpu": {"name": "Fake Orin", "compute_capability": "8.7"}}
    sidecar |= {"source_onnx": {"file": "model.fp16.onnx"}}
    (folder / "model.engine.json").write_text(json.dumps(sidecar))
    report = doctor(folder)
    check = next(f for f in report.files if f.file == engine.name)
    assert check.runs and check.how == "TensorRT 10.3.0.26 on Fake Orin (8.7)"
    assert report.next == (f"deploykit validate {engine}",) and report.exit_code == 0


def test_an_engine_built_elsewhere_is_named_with_its_rebuild(tmp_path: Path, monkeypatch):
    trt, _ = install_fakes(monkeypatch, "10.3.0.26")
    monkeypatch.setattr(device, "ROOT", tmp_path / "root")
    folder = tmp_path / "export"
    folder.mkdir()
    exported_like_onnx(folder / "model.fp16.onnx")
    fake_engine_file(folder, "10.3.0.26")
    h100 = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    record = {
        "precision": "fp16",
        "tensorrt": "10.3.0.26",
        "gpu": h100,
        "source_onnx": {"file": "model.fp16.onnx"},
    }
    (folder / "model.engine.json").write_text(json.dumps(record))
    out = tmp_path / "doctor.json"
    result = CliRunner().invoke(cli, ["doctor", str(folder), "--json", str(out)])
    assert result.exit_code == 3, result.output
    engine = next(f for f in json.loads(out.read_text())["folder"]["files"] if f["kind"] == "engine")
    assert not engine["runs"] and "NVIDIA H100 (compute capability 9.0)" in engine["reason"]
    assert "Fake Orin (compute capability 8.7)" in engine["reason"]
    assert engine["next"] == f"deploykit build {folder / 'model.fp16.onnx'}"
    assert f"next: deploykit build {folder / 'model.fp16.onnx'}" in result.output
    assert not [c for c in trt.calls if c[0] == "deserialize_cuda_engine"]


def test_an_unreadable_file_does_not_run_and_a_bad_folder_is_exit_2(tmp_path: Path, monkeypatch):
    _no_tensorrt(monkeypatch)
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    report = doctor(tmp_path, probes=Probes(root=tmp_path))
    (check,) = report.files
    assert not check.runs and check.reason and report.exit_code == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["doctor", str(empty)])
    assert result.exit_code == 2 and "holds no ONNX file or engine" in result.output


def test_doctor_imports_neither_torch_nor_onnxruntime():
    code = (
        "import sys, deploykit.workflows.doctor, deploykit.cli.doctor, deploykit.engine.device; "
        "bad = {'torch', 'onnxruntime', 'tensorrt'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("status", list(Status))
def test_statuses_are_the_documented_four(status):
    assert str(status) in ("ok", "missing", "not applicable", "error")
