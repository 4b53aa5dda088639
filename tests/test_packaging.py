"""deploykit as users install it: a wheel built from this tree, installed into a fresh ``--target``
directory put first on ``sys.path``, runs the main job from a directory outside the checkout, and its
artifacts get ordinary file modes. On a device: the same wheel with its declared dependencies in a fresh
venv is the runtime without torch or ONNX Runtime, and runs the exporter's artifact once onnxruntime is
added."""

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_package_list_covers_the_source_tree():
    """pyproject lists the packages (export_configs lives outside deploykit/): none may be forgotten."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["deploykit*"]))
    assert listed == found | {"deploykit.export_configs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("deploykit", "export_configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    (path,) = dist.glob("deploykit-*.whl")
    return path


def test_wheel_carries_configs_and_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for family in ("convit", "ceit", "deepvit", "cvt", "hvt"):
        assert f"deploykit/export_configs/{family}.toml" in names
    assert "deploykit/data/imagenet1k_labels.txt" in names
    assert "deploykit/transforms/trt_operators.json" in names
    from deploykit.validation.inputs import PHOTOS

    # the validation photographs travel with the wheel: a plain install validates on real photos
    assert {f"deploykit/data/photos/{p}.jpg" for p in PHOTOS} <= names
    assert "deploykit/data/photos/SOURCES.md" in names
    assert not any(n.startswith("export_configs/") for n in names)  # no stray top-level package


def test_installed_wheel_exports_and_predicts_outside_the_checkout(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=lambda: os.umask(0o022),
        )

    where = run("-c", "import deploykit; print(deploykit.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(target), (
        where.stdout + where.stderr
    )

    export = run("-m", "deploykit", "export", "hvt_ti_1", "--out", "out", "--quiet")
    assert export.returncode == 0, export.stderr
    assert "exported hvt_ti_1" in export.stdout
    out = work / "out"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {
        "model.onnx": 0o644,
        "manifest.json": 0o644,
        "report.html": 0o644,
        "reference.npz": 0o644,
        "build_engine.sh": 0o755,
    }, modes
    # the device: torch not importable, validate checks the artifact against the shipped reference alone
    no_torch = "import sys; sys.modules['torch'] = None; from deploykit.cli import main; sys.argv[0] = 'deploykit'; main()"
    check = run("-c", no_torch, "validate", "out/model.onnx", "--junit", "v.xml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "outputs stored (PyTorch FP32 at export)" in check.stdout

    photo = out / "photo.png"
    from PIL import Image

    Image.new("RGB", (320, 240), (200, 120, 40)).save(photo)
    predict = run("-m", "deploykit", "predict", "out/model.onnx", str(photo), "--json", "p.json")
    assert predict.returncode == 0, predict.stderr
    assert stat.S_IMODE((work / "p.json").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------- the device install
#: the fresh venv with the base install and one ONNX Runtime must stay within this (issue 29)
DEVICE_VENV_MAX_MB = 300
#: what a device command that lacks a part prints: one line naming the extra
NEEDS_EXPORT = "pip install 'deploykit[export]'"
NEEDS_ORT = "pip install 'deploykit[cpu]' (or [gpu])"


def device_python() -> str:
    """Python 3.10 — what JetPack 6 runs, the oldest deploykit supports — when this machine has one (on
    PATH or as a pyenv version), else this Python."""
    candidates = [
        shutil.which("python3.10"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python"))),
    ]
    probe = "import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 10)"
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
            return python
    return sys.executable


class DeviceVenv:
    """A fresh virtual environment and the commands run in it, outside the checkout, with none of this
    environment's Python paths."""

    def __init__(self, root: Path) -> None:
        self.path, self.work = root / "venv", root / "work"
        self.work.mkdir()
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        self.env = {k: v for k, v in os.environ.items() if k not in drop}

    def run(self, program: str, *args: object) -> subprocess.CompletedProcess:
        cmd = [str(self.path / "bin" / program), *(str(a) for a in args)]
        return subprocess.run(cmd, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=900)

    def pip_install(self, *what: object) -> None:
        r = self.run("python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *what)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

    def imports(self, module: str) -> bool:
        return self.run("python", "-c", f"import {module}").returncode == 0

    def size_mb(self) -> float:
        """What the venv takes on disk (``du``)."""
        du = subprocess.run(["du", "-sk", str(self.path)], capture_output=True, text=True, check=True)
        return int(du.stdout.split()[0]) / 1024


def one_error_line(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The single stderr line of a refused command (exit ``code``), holding every needle; no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stdout, r.stderr)
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines
    return lines[0]


@pytest.fixture(scope="module")
def device_artifact(tmp_path_factory) -> Path:
    """A small export made by this (the exporter's) environment, to be run on the device."""
    from conftest import small_config
    from exporting import export_preset

    out = tmp_path_factory.mktemp("device_artifact") / "hvt"
    export_preset("hvt_ti_1", out, small_config("hvt_ti_1", 64), engine=False)
    from PIL import Image

    Image.new("RGB", (96, 80), (200, 120, 40)).save(out.parent / "photo.png")
    return out


def test_the_wheel_installs_as_the_device_runtime(wheel: Path, device_artifact: Path, tmp_path: Path):
    """``pip install deploykit`` into a fresh venv (Python 3.10 where the machine has it, as on JetPack 6),
    with the declared dependencies from the index pip is configured with (as a user would): no torch, no ONNX Runtime; every command that needs one of them
    says which extra in one line (exit 2); with ``onnxruntime`` added, predict, the torch-free validate and
    bench run the artifact this environment exported. The venv's size is printed and bounded."""
    started = time.perf_counter()
    venv = DeviceVenv(tmp_path)
    python = device_python()
    subprocess.run([python, "-m", "venv", str(venv.path)], check=True, capture_output=True)
    version = venv.run("python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()
    venv.pip_install(wheel)
    base_mb = venv.size_mb()
    assert not venv.imports("torch") and not venv.imports("onnxruntime")
    assert venv.run("python", "-c", "import deploykit, deploykit.cli").returncode == 0
    _base_install_commands(venv, device_artifact)

    venv.pip_install("onnxruntime")
    ort_mb = venv.size_mb()
    _device_commands_with_onnxruntime(venv, device_artifact)
    print(
        f"\ndevice venv (Python {version}): {base_mb:.0f} MB base install, {ort_mb:.0f} MB with onnxruntime "
        f"(limit {DEVICE_VENV_MAX_MB} MB); {time.perf_counter() - started:.0f} s"
    )
    assert ort_mb <= DEVICE_VENV_MAX_MB, f"the device venv takes {ort_mb:.0f} MB"


def _base_install_commands(venv: DeviceVenv, artifact: Path) -> None:
    """The base install alone: help, doctor and inspect work; the rest names its extra."""
    for command in ("", "export", "validate", "predict", "inspect", "build", "bench", "triton", "serve"):
        r = venv.run("deploykit", *command.split(), "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, (command, r.stderr)
    _doctor_finds_no_onnxruntime(venv)
    one_error_line(venv.run("deploykit", "export", "cvt"), 2, "export needs PyTorch", NEEDS_EXPORT)
    one_error_line(venv.run("deploykit", "list"), 2, "list needs PyTorch", NEEDS_EXPORT)
    one_error_line(venv.run("deploykit", "bench", "hvt_ti_1"), 2, "needs PyTorch", NEEDS_EXPORT)
    model, photo = artifact / "model.onnx", artifact.parent / "photo.png"
    one_error_line(venv.run("deploykit", "predict", model, photo), 2, "predict needs ONNX Runtime", NEEDS_ORT)
    one_error_line(venv.run("deploykit", "validate", model), 2, "validate needs ONNX Runtime", NEEDS_ORT)
    inspect = venv.run("deploykit", "inspect", model)
    assert inspect.returncode == 0 and "input  input: float" in inspect.stdout, inspect.stderr


def _doctor_finds_no_onnxruntime(venv: DeviceVenv) -> None:
    doctor = venv.run("deploykit", "doctor", "--json", venv.work / "doctor.json")
    assert doctor.returncode in (0, 3), doctor.stdout + doctor.stderr
    components = json.loads((venv.work / "doctor.json").read_text())["components"]
    assert components["onnxruntime"]["status"] == "missing", components["onnxruntime"]


def _device_commands_with_onnxruntime(venv: DeviceVenv, artifact: Path) -> None:
    model, photo = artifact / "model.onnx", artifact.parent / "photo.png"
    doctor = venv.run("deploykit", "doctor", artifact, "--json", venv.work / "doctor-ort.json")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # every file of the folder runs here
    onnxruntime = json.loads((venv.work / "doctor-ort.json").read_text())["components"]["onnxruntime"]
    assert onnxruntime["status"] == "ok" and "CPUExecutionProvider" in doctor.stdout, onnxruntime
    predict = venv.run("deploykit", "predict", model, photo, "--json", "p.json")
    assert predict.returncode == 0, predict.stderr
    assert json.loads((venv.work / "p.json").read_text()), predict.stdout
    check = venv.run("deploykit", "validate", model, "--junit", "v.xml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "PASS" in check.stdout and "outputs stored (PyTorch FP32 at export)" in check.stdout
    bench = venv.run("deploykit", "bench", artifact, "--batch", "1", "--iters", "3", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr
    assert f"skipped torch: PyTorch is not installed here: {NEEDS_EXPORT}" in bench.stdout, bench.stdout
    assert "onnxruntime (CPU)" in bench.stdout, bench.stdout
    # the MatMul ceiling probe is a graph made here: it must load in the device's (older) ONNX Runtime
    assert re.search(r"MatMul ceiling [0-9]", bench.stdout), bench.stdout
