"""deploykit as users install it: a wheel built from this tree, installed into a fresh ``--target``
directory put first on ``sys.path``, runs the main job from a directory outside the checkout, and its
artifacts get ordinary file modes."""

import os
import shutil
import stat
import subprocess
import sys
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
