"""Accuracy on the user's own labelled data (``validate --dataset``, ``export --dataset``), on the trained
references (tests/data/reference) and the held-out digits: every file's JSON equals an independent count,
the torch-free path gives the torch path's records, a changed dataset is exit 2, and the accuracy and parity
records disagree honestly where they should."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from exporting import FAMILIES, HELDOUT, REFERENCES
from onnx import helper, numpy_helper
from PIL import Image

from deploykit.cli import cli
from deploykit.validation.reference import read_reference
from deploykit.workflows.dataset_pass import dataset_batch

FILES = ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8.cpu.onnx")
IMAGES = 360
NO_TORCH = "import sys; sys.modules['torch'] = None; from deploykit.cli import main; sys.argv[0] = 'deploykit'; main()"


def _cli(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _validate_json(artifact: Path, tmp_path: Path, *extra) -> tuple[int, dict]:
    out = tmp_path / f"{artifact.parent.name}-{artifact.name}.json"
    r = _cli("validate", artifact, "--dataset", HELDOUT, "--json", out, *extra)
    assert out.is_file(), r.output
    return r.exit_code, json.loads(out.read_text())


def _batch_of(artifact: Path) -> int:
    """The batch validate's dataset pass runs ``artifact`` at (32 for the 64 px references)."""
    from deploykit.workflows.predict import load

    batch = dataset_batch(load(artifact).preprocessing)
    assert batch == 32
    return batch


def _independent_count(artifact: Path, tmp_path: Path) -> tuple[float, float]:
    """Top-1 and top-5 of ``artifact`` on the held-out digits, counted from ``deploykit predict``'s answers
    and the folder each image is in."""
    out = tmp_path / f"predict-{artifact.parent.name}-{artifact.name}.json"
    images = sorted(HELDOUT.glob("*/*.png"))
    # in validate's batches: the CPU INT8 file quantizes its activations per batch (ONNX Runtime's
    # dynamic quantization), so its answers depend on which images share a batch
    r = _cli("predict", artifact, *images, "--top-k", 5, "--json", out, "--batch", _batch_of(artifact))
    assert r.exit_code == 0, r.output
    answers = json.loads(out.read_text())
    assert len(answers) == IMAGES
    top1 = top5 = 0
    for answer in answers:
        label = int(Path(answer["image"]).parent.name)
        classes = [t["class"] for t in answer["topk"]]
        top1 += classes[0] == label
        top5 += label in classes
    return top1 / IMAGES, top5 / IMAGES


@pytest.mark.parametrize("family", FAMILIES)
def test_validate_dataset_equals_an_independent_count(int8_exports, family, tmp_path):
    recorded = json.loads((REFERENCES / "accuracy.json").read_text())[family]["heldout_accuracy"]
    out = int8_exports[family].out_dir
    for name in FILES:
        code, report = _validate_json(out / name, tmp_path)
        assert code == 0, (name, report["checks"])
        accuracy = report["accuracy"]
        assert accuracy["images"] == IMAGES and accuracy["dataset"] == str(HELDOUT)
        top1, top5 = _independent_count(out / name, tmp_path)
        assert accuracy["artifact_top1"] == pytest.approx(top1, abs=1e-12), name
        assert accuracy["artifact_top5"] == pytest.approx(top5, abs=1e-12), name
        assert abs(accuracy["reference_top1"] - recorded) <= 1 / IMAGES + 1e-9  # PyTorch FP32, as trained
        flips = accuracy["flips"]
        net = (flips["artifact_only"] - flips["reference_only"]) / IMAGES
        assert accuracy["artifact_top1"] - accuracy["reference_top1"] == pytest.approx(net, abs=1e-12)
        assert [c["kind"] for c in report["checks"]].count("accuracy") == 1


def test_the_export_records_the_dataset_and_every_files_accuracy(int8_exports):
    result = int8_exports["convit"]
    info = result.manifest["dataset"]
    assert info["images"] == IMAGES and set(info["files"]) == set(FILES)
    golden = read_reference(result.out_dir / "reference.npz")
    assert golden.dataset is not None and len(golden.dataset.rows) == IMAGES
    assert golden.dataset.top1_accuracy == pytest.approx(info["pytorch"]["top1"])
    assert golden.dataset.top5.shape == (IMAGES, 5)
    report = (result.out_dir / "report.html").read_text()
    assert "Accuracy on" in report and "model.int8.cpu.onnx" in report
    # the INT8 gate measured accuracy on the dataset's images
    assert result.manifest["int8"]["accuracy"]["fp32"] == pytest.approx(info["pytorch"]["top1"])


def test_without_torch_the_records_are_the_torch_paths(int8_exports, tmp_path):
    out = int8_exports["hvt"].out_dir
    for name in ("model.fp16.onnx", "model.int8.cpu.onnx"):
        _, with_torch = _validate_json(out / name, tmp_path)
        target = tmp_path / f"no-torch-{name}.json"
        args = ["validate", str(out / name), "--dataset", str(HELDOUT), "--json", str(target)]
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        without = json.loads(target.read_text())
        assert without["accuracy"] == with_torch["accuracy"]
        accuracy_records = [c for c in without["checks"] if c["kind"] == "accuracy"]
        assert accuracy_records == [c for c in with_torch["checks"] if c["kind"] == "accuracy"]


def _copy_of_heldout(tmp_path: Path) -> Path:
    folder = tmp_path / "heldout"
    shutil.copytree(HELDOUT, folder)
    return folder


def _no_torch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True)


def test_an_engine_gives_the_records_of_the_onnx_file_it_was_built_from(int8_exports, tmp_path, monkeypatch):
    """``deploykit build`` then ``validate model.fp16.engine --dataset`` against the export's reference (no
    PyTorch run), on the TensorRT fakes with an engine that computes its ONNX file: the engine path (sidecar,
    runner, device buffers) gives the ONNX file's accuracy records."""
    from fakes import install_fakes

    out = tmp_path / "hvt"
    shutil.copytree(int8_exports["hvt"].out_dir, out)
    trt, _ = install_fakes(
        monkeypatch, "10.3.0.26", layer_dtypes=["Half"] * 4, onnx_backed=True, batch_range=(1, 32)
    )
    built = _cli("build", out / "model.fp16.onnx")
    assert built.exit_code == 0, built.output
    reference = ("--reference", out / "reference.npz")
    code, engine = _validate_json(out / "model.fp16.engine", tmp_path, *reference)
    assert code == 0, engine["checks"]
    assert any(call[0] == "execute_async_v3" for call in trt.calls)  # the engine ran, not ONNX Runtime
    _, onnx_file = _validate_json(out / "model.fp16.onnx", tmp_path, *reference)
    assert engine["accuracy"] == onnx_file["accuracy"] and engine["accuracy"]["images"] == IMAGES
    records = [[c for c in r["checks"] if c["kind"] == "accuracy"] for r in (engine, onnx_file)]
    assert records[0] == records[1] and len(records[0]) == 1


def test_a_changed_dataset_is_exit_2_naming_the_first_difference(int8_exports, tmp_path):
    artifact = int8_exports["convit"].out_dir / "model.int8.onnx"
    changed = _copy_of_heldout(tmp_path)
    first = sorted((changed / "3").iterdir())[0]
    pixels = np.array(Image.open(first))
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(first)
    cases = {"has changed": changed}
    removed = _copy_of_heldout(tmp_path / "removed")
    sorted((removed / "5").iterdir())[1].unlink()
    cases["is gone"] = removed
    relabelled = _copy_of_heldout(tmp_path / "relabelled")
    moved = sorted((relabelled / "7").iterdir())[0]
    moved.rename(relabelled / "1" / moved.name)
    cases["was"] = relabelled
    for words, folder in cases.items():
        proc = _no_torch("validate", artifact, "--dataset", folder)
        lines = [
            line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("dataset:")
        ]
        assert proc.returncode == 2, (words, proc.stdout, proc.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    # with only a floor asked for, the changed dataset still runs: the floor, and the output says why
    floor = _no_torch("validate", artifact, "--dataset", changed, "--min-accuracy", 50)
    assert floor.returncode == 0, floor.stderr
    assert "only --min-accuracy ran" in floor.stdout and "accuracy PASS: top-1" in floor.stdout


def _permuted(source: Path, target: Path, order: list[int], bias: np.ndarray | None = None) -> Path:
    """``source``'s graph with its output classes reordered (``order``) and a bias added, metadata kept:
    what an export with its classifier rows in the wrong order, or a slightly shifted head, looks like."""
    shutil.copytree(source.parent, target)
    proto = onnx.load(str(source))
    out = proto.graph.output[0].name
    producer = next(n for n in proto.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = "pre_permute"
    index = numpy_helper.from_array(np.array(order, dtype=np.int64), "permutation")
    shift = numpy_helper.from_array(
        (bias if bias is not None else np.zeros(len(order))).astype(np.float32), "shift"
    )
    proto.graph.initializer.extend([index, shift])
    proto.graph.node.extend(
        [
            helper.make_node("Gather", ["pre_permute", "permutation"], ["permuted"], axis=1),
            helper.make_node("Add", ["permuted", "shift"], [out]),
        ]
    )
    path = target / source.name
    onnx.save(proto, str(path))
    return path


def test_classifier_rows_in_the_wrong_order_fail_on_an_accuracy_record(int8_exports, tmp_path):
    source = int8_exports["cvt"].out_dir / "model.onnx"
    order = [1, 0, *range(2, 10)]
    artifact = _permuted(source, tmp_path / "wrong", order)
    code, report = _validate_json(artifact, tmp_path)
    assert code == 1
    accuracy = [c for c in report["checks"] if c["kind"] == "accuracy"]
    assert len(accuracy) == 1 and not accuracy[0]["passed"]
    assert report["accuracy"]["drop_top1"] > 0.1  # every 0 and 1 is now wrong
    assert report["accuracy"]["flips"]["reference_only"] >= 60


def _config(tmp_path: Path, **fp32) -> Path:
    lines = ["[tolerances.fp32]", *(f"{k} = {v}" for k, v in fp32.items())]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tolerances.toml"
    path.write_text('family = "convit"\n' + "\n".join(lines) + "\n")
    return path


def test_parity_and_accuracy_records_disagree_honestly(int8_exports, tmp_path):
    out = int8_exports["convit"].out_dir
    # parity fails (no error allowed at all) while the accuracy holds: the records say exactly that
    strict = _config(tmp_path, max_abs=0.0, min_cosine=1.0, min_top1=1.0, max_accuracy_drop=0.001)
    code, report = _validate_json(out / "model.onnx", tmp_path, "--config", strict)
    kinds = {c["kind"]: c["passed"] for c in report["checks"] if not c["passed"] or c["kind"] == "accuracy"}
    assert code == 1 and kinds == {"parity": False, "accuracy": True}, report["checks"]
    # a head shifted just enough to flip one right answer: parity (loosened) passes, the accuracy gate fails
    logits = _logits(out / "model.onnx")
    labels = _labels()
    bias, flipped = _one_flip(logits, labels)
    shifted = _permuted(out / "model.onnx", tmp_path / "shifted", list(range(10)), bias)
    loose = _config(tmp_path / "l", max_abs=10.0, min_cosine=0.5, min_top1=0.99, min_top5=0.5)
    code, report = _validate_json(shifted, tmp_path, "--config", loose, "--max-accuracy-drop", 0.1)
    failed = {c["kind"] for c in report["checks"] if not c["passed"]}
    assert code == 1 and failed == {"accuracy"}, report["checks"]
    assert report["accuracy"]["flips"] == {"reference_only": flipped, "artifact_only": 0}
    page = tmp_path / "acc.html"
    r = _cli(
        "validate",
        shifted,
        "--dataset",
        HELDOUT,
        "--config",
        loose,
        "--max-accuracy-drop",
        0.1,
        "--html",
        page,
    )
    assert r.exit_code == 1
    html = page.read_text()
    assert html.count("data:image/png;base64,") == flipped and "lost" in html


def _labels() -> np.ndarray:
    return np.array([int(p.parent.name) for p in sorted(HELDOUT.glob("*/*.png"))])


def _logits(path: Path) -> np.ndarray:
    from deploykit.runtime.preprocess import Preprocessing
    from deploykit.workflows.predict import load

    predictor = load(path)
    images = sorted(HELDOUT.glob("*/*.png"))
    pre: Preprocessing = predictor.preprocessing
    return np.concatenate([predictor.run(pre(images[i : i + 60])) for i in range(0, len(images), 60)])


def _one_flip(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """A bias on one class that turns exactly one right answer wrong (and no wrong answer right)."""
    right = logits.argmax(1) == labels
    for cls in range(10):
        gaps = np.sort(logits.max(1)[right & (labels != cls)] - logits[right & (labels != cls), cls])
        if len(gaps) > 1 and gaps[1] - gaps[0] > 0.02:
            bias = np.zeros(10)
            bias[cls] = (gaps[0] + gaps[1]) / 2
            shifted = (logits + bias).argmax(1)
            if int(np.sum(right & (shifted != labels))) == 1 and not np.any(~right & (shifted == labels)):
                return bias, 1
    raise AssertionError("no class bias flips exactly one image")


def test_ctrl_c_during_the_dataset_pass_is_exit_130_and_writes_nothing(int8_exports, tmp_path):
    """SIGINT in the middle of a long pass (60 copies of the held-out digits, hard links): exit 130, no
    traceback, neither the JSON report nor the page written."""
    big = tmp_path / "big"
    for image in sorted(HELDOUT.glob("*/*.png")):
        (big / image.parent.name).mkdir(parents=True, exist_ok=True)
        for copy in range(60):
            (big / image.parent.name / f"{copy:02d}-{image.name}").hardlink_to(image)
    report, page = tmp_path / "r.json", tmp_path / "p.html"
    artifact = int8_exports["hvt"].out_dir / "model.onnx"
    args = ["validate", artifact, "--dataset", big, "--json", report, "--html", page]
    command = [sys.executable, "-m", "deploykit", *map(str, args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ""
    while not first.startswith("dataset: ") and proc.poll() is None:
        first = proc.stderr.readline()  # the pass's first progress line comes after a few seconds of it
    assert f"/{IMAGES * 60} images" in first, first
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + first + rest
    assert "Traceback" not in rest
    assert not report.exists() and not page.exists()
    assert not list(tmp_path.glob(".*")), list(tmp_path.iterdir())
