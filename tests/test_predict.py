"""``deploykit predict`` and ``deploykit.runtime.load``: an exported artifact classifies images with the
preprocessing it recorded, through ONNX Runtime (FP32 and FP16 graphs) or TensorRT (fakes here).

With timm installed: an export of timm ``convit_tiny`` weights gives, on real photos, the top-5 that timm
itself gives with its own preprocessing.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploykit import load
from deploykit.cli import cli
from deploykit.core.errors import ArtifactError, ConfigError, InputError
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.postprocess import imagenet_labels, softmax
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation import validation_batch

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the real photographs")
PHOTOS = [
    Path(skimage_data.data_dir) / f for f in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
]


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def hvt(exported):
    return exported["hvt_s_4"]


def _expected(onnx_path: Path, images, k: int = 5):
    """Top-k computed independently: the manifest's preprocessing + a plain ORT session + softmax."""
    manifest = json.loads((onnx_path.parent / "manifest.json").read_text())
    batch = Preprocessing.from_dict(manifest["preprocessing"])(images)
    probs = softmax(OrtRunner(onnx_path).run(batch))
    return [list(np.argsort(-p, kind="stable")[:k]) for p in probs], probs


def test_imagenet_labels_are_bundled():
    labels = imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[285] == "Egyptian cat"
    assert all(label and "\n" not in label for label in labels)


def test_predict_cli_table_and_json(hvt, tmp_path):
    out = tmp_path / "pred.json"
    r = _cli("predict", hvt.onnx_path, *PHOTOS[:2], "--top-k", 3, "--json", out)
    assert r.exit_code == 0, r.output
    assert "Egyptian cat" in imagenet_labels() and "onnxruntime" in r.output
    assert "model.onnx (onnxruntime[CPUExecutionProvider], fp32)" in r.output  # the title names the variant
    data = json.loads(out.read_text())
    classes, probs = _expected(hvt.onnx_path, PHOTOS[:2], 3)
    assert [d["image"] for d in data] == [str(p) for p in PHOTOS[:2]]
    for row, want, p in zip(data, classes, probs):
        assert [t["class"] for t in row["topk"]] == want
        assert [t["label"] for t in row["topk"]] == [imagenet_labels()[c] for c in want]
        np.testing.assert_allclose([t["prob"] for t in row["topk"]], p[want], rtol=1e-5)
        assert set(row["topk"][0]) == {"class", "label", "prob"}
        assert row["topk"][0]["label"] in r.output  # the table shows the labels too
    assert oct(out.stat().st_mode & 0o777) != "0o600"


def test_predict_a_folder_in_batches(hvt, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in PHOTOS:
        Image.open(p).convert("RGB").save(folder / f"{p.stem}.png")
    (folder / "notes.txt").write_text("not an image, skipped by suffix")
    out = tmp_path / "p.json"
    r = _cli("predict", hvt.onnx_path, folder, "--batch", 3, "--json", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [Path(d["image"]).name for d in data] == sorted(f"{p.stem}.png" for p in PHOTOS)
    want, _ = _expected(hvt.onnx_path, sorted(folder.glob("*.png")))
    assert [[t["class"] for t in d["topk"]] for d in data] == want


def test_python_api_takes_paths_pil_and_arrays(hvt):
    predictor = load(hvt.onnx_path)
    pil = Image.open(PHOTOS[0])
    array = np.asarray(pil.convert("RGB"))
    a, b, c = predictor.predict([PHOTOS[0], pil, array])
    assert a.topk == b.topk == c.topk and a.image == str(PHOTOS[0]) and b.image == "<PIL image 1>"
    single = predictor.predict(array, top_k=2)
    assert len(single) == 1 and single[0].topk == a.topk[:2]
    batch = predictor.preprocessing(PHOTOS[:2])
    np.testing.assert_array_equal(predictor.run(batch), OrtRunner(hvt.onnx_path).run(batch))
    with pytest.raises(InputError, match="input batch must be"):
        predictor.run(np.zeros((1, 3, 64, 64), np.float32))


def test_preprocessing_matches_the_validation_inputs(hvt, tmp_path):
    """predict and validate feed the model the same pixels for the same file."""
    folder = tmp_path / "one"
    folder.mkdir()
    Image.open(PHOTOS[2]).save(folder / "a.png")
    predictor = load(hvt.onnx_path)
    from deploykit.models import create_model

    model = create_model(hvt.manifest["preset"], image_size=hvt.manifest["export_config"]["image_size"])
    ref = validation_batch(model.data_config, 16, 0, folder).images
    np.testing.assert_array_equal(predictor.preprocessing([folder / "a.png"]), ref)


def test_fp16_artifact_predicts_the_same_top1(hvt):
    fp32 = load(hvt.onnx_path).predict(PHOTOS)
    predictor = load(hvt.out_dir / "model.fp16.onnx")
    assert (predictor.variant, predictor.precision) == ("fp16", "fp16")
    fp16 = predictor.predict(PHOTOS)
    assert [p.topk[0].cls for p in fp16] == [p.topk[0].cls for p in fp32]


def test_custom_labels_file(hvt, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing-{i}\n" for i in range(1000)) + "\n")
    r = _cli("predict", hvt.onnx_path, PHOTOS[0], "--labels", labels, "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    top = json.loads((tmp_path / "p.json").read_text())[0]["topk"][0]
    assert top["label"] == f"thing-{top['class']}"
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    r = _cli("predict", hvt.onnx_path, PHOTOS[0], "--labels", short)
    assert r.exit_code == 2 and "2 labels given for a model with 1000 classes" in r.output


def test_bad_inputs_are_one_line_and_exit_2(hvt, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(PHOTOS[0].read_bytes()[:2000])
    text = tmp_path / "text.jpg"
    text.write_text("not a jpeg")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "p.json"
    cases = [
        ((hvt.onnx_path, tmp_path / "missing.jpg"), "image not found: " + str(tmp_path / "missing.jpg")),
        ((hvt.onnx_path, truncated), f"cannot read image {truncated}"),
        ((hvt.onnx_path, text), f"cannot read image {text}"),
        ((hvt.onnx_path, PHOTOS[0], "--top-k", 0), "top-k must be at least 1"),
        ((hvt.onnx_path, PHOTOS[0], "--batch", 0), "batch size"),
        ((tmp_path / "nope.onnx", PHOTOS[0]), "artifact not found"),
        ((PHOTOS[0], PHOTOS[0]), "unknown artifact type"),
        ((hvt.onnx_path, empty), "holds no image files"),
    ]
    for args, message in cases:
        r = _cli("predict", *args, "--json", out)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert "Traceback" not in r.output and not out.exists()


def test_foreign_onnx_without_a_record_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 48])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ArtifactError, match="records no preprocessing"):
        load(path)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"preprocessing": {"input_size": [3, 4, 4], "mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    predictor = load(path)  # the manifest beside it is the fallback
    assert predictor.num_classes == 48 and predictor.label(7) == "class 7"
    with pytest.raises(ConfigError, match="top-k"):
        predictor.predict(PHOTOS[0], top_k=-1)


def test_engine_artifact_predicts_through_the_tensorrt_runner(tmp_path, monkeypatch):
    """The .engine path of load(): TensorRT and cuda-python are fakes (tests/fakes.py) computing known
    logits; the preprocessing comes from the engine's sidecar alone."""
    from fakes import FakeCudart, FakeTensorRT, expected_logits, install_cudart

    monkeypatch.setitem(__import__("sys").modules, "tensorrt", FakeTensorRT("10.3.0.26", batch_range=(1, 2)))
    install_cudart(monkeypatch, FakeCudart())
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"ENGINE")
    record = {"input_size": [3, 4, 4], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    (tmp_path / "model.plan.json").write_text(json.dumps({"precision": "fp32", "preprocessing": record}))
    predictor = load(engine)
    assert predictor.max_batch == 2 and predictor.num_classes == 5
    results = predictor.predict(PHOTOS[:3], top_k=5)  # 3 images: batches of 2 and 1
    want = softmax(expected_logits(Preprocessing.from_dict(record)(PHOTOS[:3])))
    for result, p in zip(results, want):
        assert [t.cls for t in result.topk] == list(np.argsort(-p, kind="stable"))
        np.testing.assert_allclose([t.prob for t in result.topk], np.sort(p)[::-1], rtol=1e-5)
    with pytest.raises(ConfigError, match="batch size must be in 1..2"):
        predictor.predict(PHOTOS[:3], batch_size=4)


# ------------------------------------------------------------------------------------ timm parity
def test_predict_matches_timm_convit_tiny_on_real_photos(tmp_path):
    timm = pytest.importorskip("timm")
    import torch
    from exporting import export_preset

    torch.manual_seed(0)
    peer = timm.create_model("convit_tiny", pretrained=False).eval()
    with torch.no_grad():  # spread the logits so the top-5 is decided by the model, not by FP noise
        peer.head.weight.mul_(40.0)
    weights = tmp_path / "convit_tiny.pth"
    torch.save(peer.state_dict(), weights)
    result = export_preset("convit_tiny", tmp_path / "out", weights=weights)

    config = timm.data.resolve_data_config({}, model=peer)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in PHOTOS])
        timm_probs = peer(batch).softmax(-1).numpy()
    timm_top5 = [list(np.argsort(-p)[:5]) for p in timm_probs]

    out = tmp_path / "pred.json"
    r = _cli("predict", result.onnx_path, *PHOTOS, "--json", out)
    assert r.exit_code == 0, r.output
    ours = json.loads(out.read_text())
    assert [[t["class"] for t in d["topk"]] for d in ours] == timm_top5
    for d, p, top in zip(ours, timm_probs, timm_top5):
        np.testing.assert_allclose([t["prob"] for t in d["topk"]], p[top], rtol=1e-3, atol=1e-5)
    # the top-5 order is decided by the model, not by float noise: adjacent logits differ by > 1e-3
    gaps = [-np.diff(np.sort(np.log(p))[::-1][:6]) for p in timm_probs]
    assert min(float(g.min()) for g in gaps) > 1e-3


def test_predict_runs_without_torch(hvt, tmp_path):
    """The device runtime: with torch unimportable, the CLI still predicts (ONNX Runtime + numpy + PIL)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; from deploykit.cli import main; "
        f"sys.argv = ['deploykit', 'predict', {str(hvt.onnx_path)!r}, {str(PHOTOS[0])!r}, '--json', 'p.json']; "
        "main()"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    want, _ = _expected(hvt.onnx_path, PHOTOS[:1])
    assert [t["class"] for t in json.loads((tmp_path / "p.json").read_text())[0]["topk"]] == want[0]
