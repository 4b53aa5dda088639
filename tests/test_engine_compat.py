"""Engines that know where they run: the sidecar records TensorRT, the GPU, L4T and the compatibility they
were built with; an engine is refused (exit 2, one line naming both sides and the rebuild command) before
TensorRT's deserialiser sees it where its sidecar says it cannot run; ``--version-compatible`` and
``--hardware-compatible`` reach the builder on the TensorRT 10.3 and 11.4 fakes and ``build_engine.sh``;
``--hardware-compatible`` is refused on a (fake) Jetson and on a pre-Ampere GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakes import FakeTensorRT, exported_like_onnx, fake_engine_file, install_fakes, tiny_onnx

from deploykit.cli import cli
from deploykit.core.config import BatchProfile
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.record import EngineTarget, HardwareCompatibility, read_sidecar
from deploykit.engine import device
from deploykit.engine.builder import build_engine
from deploykit.engine.compat import engine_compatibility, version_tuple
from deploykit.engine.runner import TensorRTRunner
from deploykit.engine.script import write_build_script

ORIN = {"name": "Orin", "compute_capability": "8.7"}
A100 = {"name": "NVIDIA A100", "compute_capability": "8.0"}
H100 = {"name": "NVIDIA H100", "compute_capability": "9.0"}
T4 = {"name": "Tesla T4", "compute_capability": "7.5"}


def sidecar(tensorrt="10.3.0.26", gpu=ORIN, vc=False, hw="none", source="model.fp16.onnx") -> dict:
    return {
        "tensorrt": tensorrt,
        "gpu": gpu,
        "version_compatible": vc,
        "hardware_compatibility": hw,
        "source_onnx": {"file": source},
    }


def fake_jetson_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n"
    )
    return root


# ------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    ("recorded", "tensorrt", "gpu", "jetson", "ok"),
    [
        (sidecar(), "10.3.0.26", ORIN, True, True),
        (sidecar(), "10.3.0.30", ORIN, True, False),  # another build of 10.3: TensorRT refuses it too
        (sidecar(), "10.16.1.11", ORIN, False, False),
        (sidecar(vc=True), "10.16.1.11", ORIN, False, True),  # version-compatible: later 10.x runs it
        (sidecar(tensorrt="10.16.1.11", vc=True), "10.3.0.26", ORIN, True, False),  # never an older one
        (sidecar(vc=True), "11.4.0.106", ORIN, False, True),  # across majors: TensorRT decides (a note)
        (sidecar(), "10.3.0.26", H100, False, False),  # another compute capability
        (sidecar(gpu={"name": "RTX A6000", "compute_capability": "8.7"}), "10.3.0.26", ORIN, False, True),
        (sidecar(gpu=A100, hw="ampere+"), "10.3.0.26", H100, False, True),
        (sidecar(gpu=A100, hw="ampere+"), "10.3.0.26", T4, False, False),  # pre-Ampere
        (sidecar(gpu=A100, hw="ampere+"), "10.3.0.26", ORIN, True, False),  # never on a Jetson
    ],
)
def test_the_compatibility_rule(recorded, tensorrt, gpu, jetson, ok):
    verdict = engine_compatibility(
        recorded, tensorrt=tensorrt, gpu=gpu, jetson=jetson, engine=Path("/e/m.engine")
    )
    assert verdict.ok is ok and verdict.checked and "\n" not in verdict.message
    if not ok:
        assert verdict.reason.startswith("m.engine was built with TensorRT")
        assert verdict.rebuild.startswith("deploykit build /e/model.fp16.onnx")


def test_the_refusal_names_both_sides_and_the_rebuild_command():
    verdict = engine_compatibility(
        sidecar(vc=True, gpu=A100, hw="ampere+"),
        tensorrt="10.3.0.26",
        gpu=T4,
        engine=Path("out/model.engine"),
    )
    assert verdict.message == (
        "model.engine was built with TensorRT 10.3.0.26 on NVIDIA A100 (compute capability 8.0); this machine "
        "has TensorRT 10.3.0.26 on Tesla T4 (compute capability 7.5): a hardware-compatible (ampere+) engine "
        "needs an Ampere or newer GPU (compute capability 8.0+); rebuild it here: deploykit build "
        "out/model.fp16.onnx --version-compatible --hardware-compatible"
    )
    both = engine_compatibility(sidecar(), tensorrt="11.4.0.106", gpu=H100, engine=Path("m.engine"))
    assert "TensorRT 10.3.0.26 on Orin (compute capability 8.7)" in both.reason
    assert "TensorRT 11.4.0.106 on NVIDIA H100 (compute capability 9.0)" in both.reason
    assert "version that built it" in both.reason and "compute capability that built it" in both.reason


def test_nothing_recorded_is_left_to_tensorrt():
    verdict = engine_compatibility({"precision": "fp16"}, tensorrt="11.4.0.106", gpu=H100)
    assert verdict.ok and not verdict.checked
    note = engine_compatibility(sidecar(vc=True), tensorrt="11.4.0.106", gpu=ORIN)
    assert note.ok and "TensorRT decides" in note.reason
    assert version_tuple("10.3.0.26") == (10, 3, 0, 26) and version_tuple("11.4.0.106rc1") == (11, 4, 0, 106)


# ------------------------------------------------------------------------------------------ the runner
def _engine(tmp_path: Path, version: str, **fields) -> Path:
    engine = fake_engine_file(tmp_path, version)
    record = json.loads((tmp_path / "model.engine.json").read_text())
    (tmp_path / "model.engine.json").write_text(json.dumps({**record, **sidecar(tensorrt=version, **fields)}))
    return engine


@pytest.mark.parametrize(
    ("here", "built", "gpu", "named"),
    [
        ("10.3.0.26", "10.3.0.26", H100, "on NVIDIA H100 (compute capability 9.0); this machine has TensorRT 10.3.0.26 on Fake Orin (compute capability 8.7)"),
        ("11.4.0.106", "10.3.0.26", ORIN, "TensorRT 10.3.0.26 on Orin (compute capability 8.7); this machine has TensorRT 11.4.0.106"),
    ],
)  # fmt: skip
def test_runner_refuses_before_deserialising(tmp_path: Path, monkeypatch, here, built, gpu, named):
    trt, _ = install_fakes(monkeypatch, here)
    engine = _engine(tmp_path, built, gpu=gpu)
    with pytest.raises(ArtifactError) as info:
        TensorRTRunner(engine)
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message and named in message
    assert message.endswith(f"rebuild it here: deploykit build {tmp_path / 'model.fp16.onnx'}")
    assert not [c for c in trt.calls if c[0] == "deserialize_cuda_engine"]
    # the same through the command line: one line, exit 2
    photo = Path(__file__).parents[1] / "deploykit" / "data" / "photos" / "coffee.jpg"
    result = CliRunner().invoke(cli, ["predict", str(engine), str(photo)])
    assert result.exit_code == 2 and named in result.output and len(result.output.strip().splitlines()) == 1


def test_runner_allows_host_code_for_a_version_compatible_engine(tmp_path: Path, monkeypatch):
    trt, _ = install_fakes(monkeypatch, "10.16.1.11")
    runner = TensorRTRunner(
        _engine(tmp_path, "10.3.0.26", gpu={"name": "Fake Orin", "compute_capability": "8.7"}, vc=True)
    )
    names = [c[0] for c in trt.calls]
    assert ("runtime.engine_host_code_allowed", True) in trt.calls
    assert names.index("runtime.engine_host_code_allowed") < names.index("deserialize_cuda_engine")
    runner.close()
    trt, _ = install_fakes(monkeypatch, "10.3.0.26")
    TensorRTRunner(fake_engine_file(tmp_path)).close()  # an old sidecar: TensorRT tries, no host code
    assert not any(c[0].startswith("runtime.") for c in trt.calls)


# ------------------------------------------------------------------------------------------ the build
@pytest.mark.parametrize("version", ["10.3.0.26", "11.4.0.106"])
def test_build_flags_on_both_versions(tmp_path: Path, monkeypatch, version):
    trt, _ = install_fakes(monkeypatch, version, gpu="NVIDIA A100", capability=(8, 0))
    result = build_engine(
        exported_like_onnx(tmp_path / "model.onnx"),
        tmp_path / "model.engine",
        batch=BatchProfile(min=1, opt=1, max=4),
        version_compatible=True,
        hardware_compatible=True,
    )
    assert ("set_flag", "VERSION_COMPATIBLE") in trt.calls
    level = FakeTensorRT.HardwareCompatibilityLevel.AMPERE_PLUS
    assert ("config.hardware_compatibility_level", level) in trt.calls
    names = [c[0] for c in trt.calls]
    assert names.index("set_flag") < names.index("build_serialized_network")
    assert [c for c in trt.calls if c[0] == "set_flag"] == [("set_flag", "VERSION_COMPATIBLE")]
    recorded = read_sidecar(result.engine_path)  # checked against the schema
    assert recorded["version_compatible"] is True and recorded["hardware_compatibility"] == "ampere+"
    assert recorded["tensorrt"] == version and recorded["l4t"] is None
    assert EngineTarget.from_sidecar(recorded) == EngineTarget(
        tensorrt=version,
        gpu_name="NVIDIA A100",
        compute_capability="8.0",
        memory_mib=8192,
        version_compatible=True,
        hardware_compatibility=HardwareCompatibility.AMPERE_PLUS,
        source_onnx="model.onnx",
    )


def test_default_build_sets_no_flag_and_records_l4t_on_a_jetson(tmp_path: Path, monkeypatch):
    trt, _ = install_fakes(monkeypatch, "10.3.0.26")
    monkeypatch.setattr(device, "ROOT", fake_jetson_root(tmp_path / "root"))
    result = build_engine(
        tiny_onnx(tmp_path / "model.onnx"), tmp_path / "m.engine", batch=BatchProfile(min=1, opt=1, max=1)
    )
    assert not [c for c in trt.calls if c[0] == "set_flag" or c[0] == "config.hardware_compatibility_level"]
    assert result.sidecar["l4t"] == "36.4.3" and result.sidecar["version_compatible"] is False
    assert result.sidecar["hardware_compatibility"] == "none"
    assert result.sidecar["gpu"] == {"name": "Fake Orin", "compute_capability": "8.7", "memory_mib": 8192}


def test_hardware_compatible_refused_on_a_jetson_and_before_ampere(tmp_path: Path, monkeypatch):
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    trt, _ = install_fakes(monkeypatch, "10.3.0.26")
    monkeypatch.setattr(device, "ROOT", fake_jetson_root(tmp_path / "root"))
    one = BatchProfile(min=1, opt=1, max=1)
    with pytest.raises(ConfigError, match="not supported on a Jetson") as info:
        build_engine(onnx_path, tmp_path / "m.engine", batch=one, hardware_compatible=True)
    assert info.value.exit_code == 2
    result = CliRunner().invoke(cli, ["build", str(onnx_path), "--hardware-compatible"])
    assert result.exit_code == 2 and "not supported on a Jetson" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not [c for c in trt.calls if c[0] == "Builder"] and not (tmp_path / "m.engine").exists()
    assert not (tmp_path / "build_engine.sh").exists()
    monkeypatch.setattr(device, "ROOT", tmp_path / "not-a-jetson")
    install_fakes(monkeypatch, "11.4.0.106", gpu="Tesla T4", capability=(7, 5))
    with pytest.raises(ConfigError, match="needs an Ampere or newer GPU .* Tesla T4 is 7.5"):
        build_engine(
            onnx_path,
            tmp_path / "m.engine",
            batch=BatchProfile(min=1, opt=1, max=1),
            hardware_compatible=True,
        )
    install_fakes(monkeypatch, "11.4.0.106", gpu="NVIDIA A100", capability=(8, 0))
    monkeypatch.delattr(FakeTensorRT, "HardwareCompatibilityLevel")
    with pytest.raises(ConfigError, match="has no HardwareCompatibilityLevel"):
        build_engine(
            onnx_path,
            tmp_path / "m.engine",
            batch=BatchProfile(min=1, opt=1, max=1),
            hardware_compatible=True,
        )


def test_build_command_passes_the_flags(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "11.4.0.106", gpu="NVIDIA A100", capability=(8, 0))
    onnx_path = exported_like_onnx(tmp_path / "model.onnx")
    result = CliRunner().invoke(
        cli, ["build", str(onnx_path), "--version-compatible", "--hardware-compatible"]
    )
    assert result.exit_code == 0, result.output
    assert "version-compatible, hardware-compatible: Ampere+" in result.output
    recorded = read_sidecar(tmp_path / "model.engine")
    assert recorded["version_compatible"] and recorded["hardware_compatibility"] == "ampere+"


# ------------------------------------------------------------------------------------------ the script
def _stub_trtexec(bin_dir: Path, banner: str, flags: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "trtexec"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = --help ]; then echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{banner}]"; '
        f'printf "%s\\n" {flags}; exit 1; fi\n'
        'printf "%s\\n" "$@"\n'
    )
    fake.chmod(0o755)


def _script(tmp_path: Path, **compat) -> Path:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")
    return write_build_script(
        onnx_path,
        batch=BatchProfile(min=1, opt=1, max=4),
        input_name="input",
        input_shape_chw=(3, 16, 16),
        workspace_mib=1024,
        opt_level=3,
        timing_cache_name="timing.cache",
        engine_name="model.engine",
        reason="no TensorRT here",
        **compat,
    )


def _run(script: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("banner", ["100300", "110400"])
def test_build_script_carries_the_compatibility_flags(tmp_path: Path, banner: str):
    script = _script(tmp_path, version_compatible=True, hardware_compatible=True)
    subprocess.run(["bash", "-n", str(script)], check=True)
    _stub_trtexec(tmp_path / "bin", banner, "--noTF32 --versionCompatible --hardwareCompatibilityLevel=mode")
    done = _run(script, tmp_path / "bin")
    assert done.returncode == 0, done.stderr
    args = done.stdout.split()
    assert "--versionCompatible" in args and "--hardwareCompatibilityLevel=ampere+" in args
    assert (
        "--versionCompatible --hardwareCompatibilityLevel=ampere+" in done.stderr
    )  # said with the version flags
    (tmp_path / "plain").mkdir()
    plain = _run(_script(tmp_path / "plain"), tmp_path / "bin")
    assert plain.returncode == 0, plain.stderr
    assert "--versionCompatible" not in plain.stdout and "--hardwareCompatibilityLevel" not in plain.stdout


def test_build_script_stops_where_trtexec_lacks_a_flag(tmp_path: Path):
    script = _script(tmp_path, version_compatible=True)
    _stub_trtexec(tmp_path / "bin", "100300", "--noTF32")
    done = _run(script, tmp_path / "bin")
    assert (
        done.returncode == 2 and "has no --versionCompatible" in done.stderr and "--onnx" not in done.stdout
    )


def test_build_command_without_tensorrt_writes_the_flags_into_the_script(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    result = CliRunner().invoke(cli, ["build", str(onnx_path), "--version-compatible"])
    assert result.exit_code == 3, result.output
    text = (tmp_path / "build_engine.sh").read_text()
    assert "flags+=(--versionCompatible)" in text and "hardwareCompatibilityLevel" not in text
