"""Golden references (issue 19): every export ships reference.npz, and ``deploykit validate`` checks any
artifact against it without PyTorch — the same records and exit codes as the torch-based gate."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from deploykit.cli import cli
from deploykit.core.io import sha256_file
from deploykit.validation.reference import REFERENCE_NAME, read_reference, reference_bytes

#: torch made unimportable, then the CLI (what a device install without torch runs)
NO_TORCH = "import sys; sys.modules['torch'] = None; from deploykit.cli import main; sys.argv[0] = 'deploykit'; main()"


def _no_torch(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def export(exported):
    return exported["hvt_s_4"]


def _copy(result, target: Path, names=("manifest.json", REFERENCE_NAME)) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(result.out_dir / name, target / name)
    return target


def test_every_export_ships_a_small_reference_recorded_everywhere(export):
    path = export.out_dir / REFERENCE_NAME
    sha = sha256_file(path)
    assert (
        export.manifest["reference"]["sha256"]
        == sha
        == export.manifest["artifacts"][REFERENCE_NAME]["sha256"]
    )
    for name in ("model.onnx", "model.fp16.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(export.out_dir / name)).metadata_props}
        assert meta["deploykit.reference_sha256"] == sha
    golden = read_reference(path)
    assert golden.images.dtype == np.uint8 and golden.images.shape == (16, 128, 128, 3)
    assert golden.outputs.shape == (16, 1000)
    # the stored images, normalized as a device does, are exactly the images the export checked
    images, outputs = golden.batch("fp32")
    from deploykit.runtime.ort_runner import OrtRunner

    np.testing.assert_allclose(OrtRunner(str(export.out_dir / "model.onnx")).run(images), outputs, atol=1e-4)
    assert set(golden.record["tolerances"]) == {"fp32", "fp16", "int8"}
    assert golden.identity["preset"] == "hvt_s_4" and golden.identity["model_args"]["image_size"] == 128
    assert path.stat().st_size < 16 * 128 * 128 * 3 + 200_000


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.onnx"])
def test_validate_without_torch_passes_on_the_reference_alone(export, tmp_path, name):
    run = _no_torch(
        "validate", export.out_dir / name, "--json", tmp_path / "v.json", "--junit", tmp_path / "v.xml"
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "outputs stored (PyTorch FP32 at export)" in run.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["images"] == 16 and report["inputs"] == "reference"
    assert 'failures="0"' in (tmp_path / "v.xml").read_text()


def test_a_perturbed_initializer_fails_without_torch(export, tmp_path):
    folder = _copy(export, tmp_path / "broken")
    proto = onnx.load(str(export.out_dir / "model.onnx"))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(biggest).copy()
    array.flat[: array.size // 8] *= -3.0
    biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
    onnx.save(proto, str(folder / "model.onnx"))
    run = _no_torch("validate", folder / "model.onnx", "--json", tmp_path / "v.json")
    assert run.returncode == 1, run.stderr + run.stdout
    assert "FAIL" in run.stdout and "worst: logits:" in run.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["worst"]["output"] == "logits" and report["worst"]["metric"] in (
        "max_abs",
        "cosine_min",
        "top1",
    )


def test_a_tampered_or_foreign_reference_is_a_usage_error(export, exported, tmp_path):
    tampered = tmp_path / "tampered.npz"
    golden = read_reference(export.out_dir / REFERENCE_NAME)
    tampered.write_bytes(
        reference_bytes(
            golden.images,
            golden.outputs + 0.5,
            tolerances=golden.record["tolerances"],
            identity=golden.identity,
            names=golden.record["names"],
        )
    )
    for reference, words in (
        (tampered, "is not the reference"),
        (exported["cvt_13"].out_dir / REFERENCE_NAME, "is not the reference"),
        (export.out_dir / "manifest.json", "is not a deploykit reference"),
    ):
        run = _no_torch("validate", export.out_dir / "model.onnx", "--reference", reference)
        assert run.returncode == 2, run.stderr + run.stdout
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], run.stderr
    # an artifact with no record of its reference: the identity decides (another preset is refused)
    folder = _copy(export, tmp_path / "old", names=())
    proto = onnx.load(str(export.out_dir / "model.onnx"))
    kept = [p for p in proto.metadata_props if p.key != "deploykit.reference_sha256"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(folder / "model.onnx"))
    run = _no_torch(
        "validate", folder / "model.onnx", "--reference", exported["cvt_13"].out_dir / REFERENCE_NAME
    )
    assert run.returncode == 2 and "belongs to another model" in run.stderr


def test_no_reference_and_no_torch_says_what_to_do(export, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    shutil.copy(export.out_dir / "model.onnx", folder / "model.onnx")
    run = _no_torch("validate", folder / "model.onnx")
    assert run.returncode == 2 and "no reference.npz beside" in run.stderr
    run = _no_torch("validate", export.out_dir / "model.onnx", "--model", "hvt_s_4")
    assert run.returncode == 2 and "not installed" in run.stderr


@pytest.mark.parametrize("name", ["model.onnx", "model.fp16.onnx"])
def test_torch_free_result_equals_the_recomputed_one(export, tmp_path, name):
    """Same images (the reference's), metrics within 1e-6: the stored outputs are what PyTorch computes."""
    artifact, reference = export.out_dir / name, export.out_dir / REFERENCE_NAME
    stored = CliRunner().invoke(
        cli, ["validate", str(artifact), "--reference", str(reference), "--json", str(tmp_path / "a.json")]
    )
    recomputed = CliRunner().invoke(
        cli,
        [
            "validate",
            str(artifact),
            "--model",
            "hvt_s_4",
            "--reference",
            str(reference),
            "--json",
            str(tmp_path / "b.json"),
        ],
    )
    assert stored.exit_code == recomputed.exit_code == 0, stored.output + recomputed.output
    assert "outputs recomputed with PyTorch" in recomputed.output
    a = json.loads((tmp_path / "a.json").read_text())["parity"]["outputs"]["logits"]
    b = json.loads((tmp_path / "b.json").read_text())["parity"]["outputs"]["logits"]
    for key in ("max_abs", "mean_abs", "cosine_min", "cosine_mean", "top1", "top5"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.gpu
def test_engine_against_the_reference_with_the_fakes(tmp_path, monkeypatch):
    """An engine is checked with the torch-free runner against the stored outputs (TensorRT fakes here; on
    a GPU machine the same path runs a real engine: the test is marked for the GPU set too)."""
    from fakes import expected_logits, fake_engine_file, install_fakes

    from deploykit.runtime.preprocess import Preprocessing
    from deploykit.workflows.validate import validate_with_reference

    install_fakes(monkeypatch, "10.3.0.26", classes=5)
    pre = {
        "input_size": [3, 4, 4],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
    pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3)).astype(np.uint8)
    images = Preprocessing.from_dict(pre).normalize(pixels.astype(np.float32) / 255.0)
    tolerances = {
        p: {"max_abs": 1e-4, "min_cosine": 0.9999, "min_top1": 1.0} for p in ("fp32", "fp16", "int8")
    }
    identity = {
        "preset": "cvt_13",
        "family": "cvt",
        "model_args": {"num_classes": 5, "image_size": 4},
        "input": {"name": "input", "shape": ["batch", 3, 4, 4]},
        "preprocessing": pre,
    }
    engine = fake_engine_file(tmp_path)
    for outputs, code in ((expected_logits(images), 0), (expected_logits(images) * 1.5, 1)):
        data = reference_bytes(pixels, outputs, tolerances=tolerances, identity=identity, names=["x"] * 6)
        (tmp_path / REFERENCE_NAME).write_bytes(data)
        sidecar = {"precision": "fp32", "reference_sha256": sha256_file(tmp_path / REFERENCE_NAME)}
        (tmp_path / "model.engine.json").write_text(json.dumps(sidecar))
        report = validate_with_reference(engine)
        assert report.exit_code == code and report.runtime.startswith("tensorrt")
        assert report.facts["reference"]["outputs"].startswith("stored")
