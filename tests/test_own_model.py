"""Your own model (issue 16): a checkpoint someone trained — its classes, its resolution, its class names —
exports with no flag describing it, from a file (timm ``state_dict``, Hugging Face ``save_pretrained``
directory) or from memory (``deploykit.export(model)``), and predicts / serves with its own names.

Every parity here is checked independently of deploykit's own gate as well: the exported ``model.onnx``
run with a plain ONNX Runtime session on the images deploykit's recorded preprocessing makes, against the
peer library's own model (timm, transformers) or the in-memory model on the same tensors.

Weights are random (nothing is downloaded) and moved off their init, so an all-zero head cannot hide a
wrong mapping. The five-family matrix uses the torchscript exporter (``--exporter torchscript``: about 3x
faster than dynamo, which the timm and Hugging Face exports here use, the default).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import deploykit
from deploykit.cli import cli
from deploykit.core.config import default_config
from deploykit.models import create_model, get_preset
from deploykit.runtime.preprocess import Preprocessing

ATOL = 1e-5
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FLOWERS = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
SEVEN = ["red", "orange", "yellow", "green", "blue", "indigo", "violet"]
#: the five families at a resolution other than the preset's 224 (CvT takes any size)
FAMILIES = {"convit_tiny": 48, "ceit_tiny": 64, "deepvit_16b": 48, "cvt_13": 72, "hvt_ti_1": 96}


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Move every float tensor off its init (a zero-initialised head would make parity trivial)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()


def _write_labels(path: Path, names: list[str]) -> Path:
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _metadata(onnx_path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}


def _io_dims(onnx_path: Path) -> tuple[list, list]:
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    (inp,), (out,) = graph.input, graph.output

    def dims(v):
        return [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]

    return dims(inp), dims(out)


def _pixels(out: Path, images: list[Path]) -> np.ndarray:
    """The batch deploykit's predict would feed the artifact: its recorded preprocessing."""
    return Preprocessing.from_dict(_manifest(out)["preprocessing"])(images)


def _ort(onnx_path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _dynamic_batch_max_abs(manifest: dict) -> float:
    return max(o["max_abs"] for o in manifest["parity"]["dynamic batch"]["outputs"].values())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six images of different sizes and aspect ratios (resize and centre crop both matter)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(16)
    paths = []
    for i, (w, h) in enumerate([(96, 72), (60, 110), (128, 128), (200, 90), (75, 75), (140, 160)]):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60 * i], axis=-1)
        pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


# ----------------------------------------------------------------------- a fine-tuned timm checkpoint
@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_ten(timm, tmp_path_factory):
    """timm convit_tiny fine-tuned to 10 classes at 64 px: its state_dict as torch.save writes it."""
    folder = tmp_path_factory.mktemp("timm10")
    torch.manual_seed(10)
    peer = _perturb(timm.create_model("convit_tiny", num_classes=10, img_size=64), seed=10)
    path = folder / "convit_tiny_cifar10.pth"
    torch.save(peer.state_dict(), path)
    return peer, path, _write_labels(folder / "cifar10.txt", CIFAR10)


@pytest.fixture(scope="module")
def timm_export(timm_ten, tmp_path_factory):
    _, path, labels = timm_ten
    out = tmp_path_factory.mktemp("timm10_export") / "convit_cifar10"
    r = _cli("export", "convit_tiny", "--weights", path, "--labels", labels, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r


def test_timm_checkpoint_exports_its_classes_and_resolution(timm_ten, timm_export):
    _, path, _ = timm_ten
    out, r = timm_export
    assert "model: 64x64 input, 10 classes (named)" in r.stdout
    assert "RANDOM" not in r.stdout
    manifest = _manifest(out)
    model = manifest["model"]
    assert model["preset"] == "convit_tiny" and model["weights"] == "file"
    assert model["model_args"] == {"num_classes": 10, "image_size": 64}
    inferred = model["inferred"]
    assert (inferred["num_classes"], inferred["image_size"]) == (10, 64)
    assert "(10, 192)" in inferred["from"]["num_classes"]  # the head's rows ...
    assert "pos_embed" in inferred["from"]["image_size"]  # ... and the position grid said so
    assert manifest["weights"]["format"] == "timm-convit" and manifest["random_weights"] is False
    assert manifest["labels"] == CIFAR10
    assert manifest["preprocessing"]["input_size"] == [3, 64, 64]
    assert _io_dims(out / "model.onnx") == (["batch", 3, 64, 64], ["batch", 10])
    meta = _metadata(out / "model.onnx")
    assert json.loads(meta["deploykit.labels"]) == CIFAR10
    assert json.loads(meta["deploykit.model_args"]) == {"num_classes": 10, "image_size": 64}
    assert meta["deploykit.weights_state_sha256"] == model["weights_state_sha256"]
    assert _dynamic_batch_max_abs(manifest) <= ATOL


def test_timm_checkpoint_parity_against_timm(timm_ten, timm_export, images):
    peer, _, _ = timm_ten
    out, _ = timm_export
    batch = _pixels(out, images)
    assert batch.shape == (len(images), 3, 64, 64)
    with torch.no_grad():
        expected = peer(torch.from_numpy(batch)).numpy()
    got = _ort(out / "model.onnx", batch)
    assert got.shape == (len(images), 10)
    assert np.abs(expected).max() > 0.1  # logits that mean something, not an all-zero head
    err = _max_abs(got, expected)
    print(f"timm convit_tiny 10 classes @64: max abs logit difference vs timm {err:.2e}")
    assert err <= ATOL


def test_predict_names_the_classes_given_at_export(timm_ten, timm_export, images, tmp_path):
    peer, _, _ = timm_ten
    out, _ = timm_export
    preds = tmp_path / "pred.json"
    r = _cli("predict", out / "model.onnx", *images, "--top-k", 10, "--json", preds)  # no --labels
    assert r.exit_code == 0, r.output
    data = json.loads(preds.read_text())
    with torch.no_grad():
        expected = peer(torch.from_numpy(_pixels(out, images))).numpy()
    for row, logits in zip(data, expected):
        assert len(row["topk"]) == 10
        assert [t["label"] for t in row["topk"]] == [CIFAR10[t["class"]] for t in row["topk"]]
        assert sorted(t["label"] for t in row["topk"]) == sorted(CIFAR10)
        assert row["topk"][0]["class"] == int(np.argmax(logits))
        assert row["topk"][0]["label"] in r.stdout
    assert "class 0" not in r.stdout


def test_predict_labels_flag_still_wins(timm_export, images, tmp_path):
    out, _ = timm_export
    other = _write_labels(tmp_path / "other.txt", [f"kind-{i}" for i in range(10)])
    preds = tmp_path / "pred.json"
    r = _cli("predict", out / "model.onnx", images[0], "--top-k", 3, "--labels", other, "--json", preds)
    assert r.exit_code == 0, r.output
    (row,) = json.loads(preds.read_text())
    assert [t["label"] for t in row["topk"]] == [f"kind-{t['class']}" for t in row["topk"]]


def test_validate_reads_the_model_from_the_artifact(timm_export, tmp_path):
    out, _ = timm_export
    report = tmp_path / "parity.json"
    r = _cli("validate", out / "model.onnx", "--json", report)  # no --model, no --weights
    assert r.exit_code == 0, r.output
    assert report.is_file() and json.loads(report.read_text())


# -------------------------------------------------------------------- a headless timm checkpoint
def test_headless_timm_checkpoint_exports_features(timm, tmp_path, images):
    torch.manual_seed(0)
    peer = _perturb(timm.create_model("convit_tiny", num_classes=0, img_size=64), seed=0)
    path = tmp_path / "convit_tiny_features.pth"
    torch.save(peer.state_dict(), path)
    out = tmp_path / "features"
    r = _cli("export", "convit_tiny", "--weights", path, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "no head: outputs features" in r.stdout
    manifest = _manifest(out)
    assert manifest["model"]["model_args"] == {"num_classes": 0, "image_size": 64}
    assert manifest["model"]["inferred"]["num_classes"] == 0 and manifest["labels"] in (None, [])
    assert _io_dims(out / "model.onnx")[1] == ["batch", 192]
    assert _dynamic_batch_max_abs(manifest) <= ATOL
    batch = _pixels(out, images)
    with torch.no_grad():
        expected = peer(torch.from_numpy(batch)).numpy()  # num_classes=0: pooled features
        assert np.array_equal(expected, peer.forward_head(peer.forward_features(torch.from_numpy(batch))))
    got = _ort(out / "model.onnx", batch)
    assert got.shape == (len(images), 192)
    err = _max_abs(got, expected)
    print(f"timm convit_tiny headless @64: max abs feature difference vs timm {err:.2e}")
    assert err <= ATOL


# ------------------------------------------------------------------ a fine-tuned Hugging Face CvT
@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_flowers(transformers, tmp_path_factory):
    """HF CvT fine-tuned to 5 flowers (CvtConfig's defaults are CvT-13's architecture, deploykit's cvt_13
    preset): save_pretrained + its image processor, as docs/own-model.md shows."""
    config = transformers.CvtConfig(
        num_labels=5, id2label=dict(enumerate(FLOWERS)), label2id={n: i for i, n in enumerate(FLOWERS)}
    )
    assert (list(config.embed_dim), list(config.depth)) == ([64, 192, 384], [1, 2, 10])
    torch.manual_seed(5)
    peer = _perturb(transformers.CvtForImageClassification(config), seed=5)
    directory = tmp_path_factory.mktemp("hf") / "cvt13-flowers"
    peer.save_pretrained(directory)
    transformers.ConvNextImageProcessor(
        crop_pct=0.9, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=2
    ).save_pretrained(directory)
    return peer, directory


@pytest.fixture(scope="module")
def hf_export(hf_flowers, tmp_path_factory):
    _, directory = hf_flowers
    out = tmp_path_factory.mktemp("hf_export") / "cvt_flowers"
    r = _cli("export", "cvt_13", "--weights", directory, "--image-size", 160, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return out


def test_hf_directory_brings_names_and_preprocessing(hf_export):
    out = hf_export
    manifest = _manifest(out)
    assert manifest["model"]["model_args"] == {"num_classes": 5, "image_size": 160}
    assert manifest["labels"] == FLOWERS  # config.json's id2label
    weights = manifest["weights"]
    assert (weights["format"], weights["container"]) == ("hf-cvt", "hf-directory")
    assert any("GELU" in a for a in weights["adjustments"])  # HF CvT's exact GELU
    expected = {
        "input_size": [3, 160, 160],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bilinear",  # resample=2
        "crop_pct": 0.9,
    }
    assert manifest["preprocessing"] == expected
    meta = _metadata(out / "model.onnx")
    assert json.loads(meta["deploykit.preprocessing"]) == expected
    assert json.loads(meta["deploykit.labels"]) == FLOWERS
    assert _io_dims(out / "model.onnx") == (["batch", 3, 160, 160], ["batch", 5])
    assert _dynamic_batch_max_abs(manifest) <= ATOL


def test_hf_directory_parity_against_transformers(hf_flowers, hf_export, images):
    peer, _ = hf_flowers
    batch = _pixels(hf_export, images)
    with torch.no_grad():
        expected = peer(pixel_values=torch.from_numpy(batch)).logits.numpy()
    got = _ort(hf_export / "model.onnx", batch)
    assert np.abs(expected).max() > 0.1
    err = _max_abs(got, expected)
    print(f"HF CvT-13 5 classes @160: max abs logit difference vs transformers {err:.2e}")
    assert err <= ATOL


def test_hf_directory_without_image_size_takes_the_processors(hf_flowers):
    # CvT has no position grid: with no --image-size the processor's size (shortest_edge 384) is the
    # export's resolution (the model is only prepared here: a 384 px export takes minutes on 2 cores)
    from deploykit.workflows.export.model import prepare_model

    peer, directory = hf_flowers
    prepared = prepare_model("cvt_13", config=default_config("cvt"), weights=directory)
    model = prepared.model
    assert (model.num_classes, model.image_size) == (5, 384) and prepared.labels == tuple(FLOWERS)
    data = model.data_config
    # from 384 px on ConvNextImageProcessor resizes without cropping: crop_pct 1.0 gives its pixels
    assert tuple(data.input_size) == (3, 384, 384) and data.crop_pct == 1.0
    assert (tuple(data.mean), data.interpolation) == ((0.5, 0.5, 0.5), "bilinear")
    import dataclasses

    import transformers
    from PIL import Image

    from deploykit.runtime.preprocess import Preprocessing

    square = Image.fromarray(np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8))
    theirs = transformers.ConvNextImageProcessor.from_pretrained(directory)(square, return_tensors="np")
    ours = Preprocessing.from_dict(dataclasses.asdict(data))([square])
    diff = float(np.abs(theirs["pixel_values"] - ours).max())
    print(f"HF processor vs deploykit at 384 px, square image: max abs {diff:.2e}")
    assert diff < 2e-2  # PIL vs HF resize rounding only
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert _max_abs(model(x), peer(pixel_values=x).logits) <= ATOL


def test_predict_names_the_hf_classes(hf_export, images, tmp_path):
    preds = tmp_path / "pred.json"
    r = _cli("predict", hf_export / "model.onnx", *images[:3], "--json", preds)
    assert r.exit_code == 0, r.output
    for row in json.loads(preds.read_text()):
        assert len(row["topk"]) == 5  # top-k is capped at the model's five classes
        assert [t["label"] for t in row["topk"]] == [FLOWERS[t["class"]] for t in row["topk"]]
        assert sorted(t["label"] for t in row["topk"]) == sorted(FLOWERS)


# ----------------------------------------------- five families: from a file and from memory, alike
@pytest.fixture(scope="module", params=list(FAMILIES), ids=list(FAMILIES))
def family_pair(request, tmp_path_factory):
    """One 7-class model per family at a non-224 size: exported by the CLI from its saved state_dict
    (CvT: plus --image-size, it has no position grid to read) and by deploykit.export from memory."""
    preset, size = request.param, FAMILIES[request.param]
    folder = tmp_path_factory.mktemp(preset)
    torch.manual_seed(7)
    model = _perturb(create_model(preset, num_classes=7, image_size=size), seed=7)
    checkpoint = folder / f"{preset}_7.pth"
    torch.save(model.state_dict(), checkpoint)
    labels = _write_labels(folder / "labels.txt", SEVEN)
    from_file = folder / "from_file"
    extra = ["--image-size", size] if get_preset(preset).family == "cvt" else []
    r = _cli(
        "export", preset, "--weights", checkpoint, "--labels", labels, "--exporter", "torchscript",
        "--out", from_file, "--quiet", *extra,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    config = dataclasses.replace(default_config(get_preset(preset).family), exporter="torchscript")
    result = deploykit.export(model, folder / "from_memory", labels=SEVEN, config=config)
    return preset, size, model, from_file, result


def test_family_exports_from_file_and_memory_alike(family_pair):
    preset, size, model, from_file, result = family_pair
    file_manifest, memory_manifest = _manifest(from_file), result.manifest
    for manifest, source in ((file_manifest, "file"), (memory_manifest, "memory")):
        record = manifest["model"]
        assert record["preset"] == preset and record["weights"] == source
        assert record["model_args"] == {"num_classes": 7, "image_size": size}
        assert manifest["labels"] == SEVEN and manifest["random_weights"] is False
        assert _dynamic_batch_max_abs(manifest) <= ATOL, preset
    inferred = file_manifest["model"]["inferred"]
    assert inferred["num_classes"] == 7
    assert inferred["image_size"] == (None if preset.startswith("cvt") else size)
    # the same weights: the same fingerprint, the same bytes
    assert file_manifest["model"]["weights_state_sha256"] == memory_manifest["model"]["weights_state_sha256"]
    assert (from_file / "model.onnx").read_bytes() == result.onnx_path.read_bytes()
    assert result.parity["dynamic batch"].worst_metric("max_abs") <= ATOL


def test_family_export_parity_against_the_model(family_pair, images):
    preset, size, model, from_file, _ = family_pair
    batch = _pixels(from_file, images)
    assert batch.shape == (len(images), 3, size, size)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    err = _max_abs(_ort(from_file / "model.onnx", batch), expected)
    print(f"{preset} 7 classes @{size}: max abs logit difference vs the model in memory {err:.2e}")
    assert err <= ATOL


def test_family_triton_repository_gets_shape_and_labels(family_pair, tmp_path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed"
    )
    from google.protobuf import text_format

    preset, size, _, from_file, _ = family_pair
    repo = tmp_path / "repo"
    r = _cli("triton", from_file, "--repo", repo)
    assert r.exit_code == 0, r.output

    def parse(name):
        return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    main = parse(preset)
    (inp,), (out,) = main.input, main.output
    assert list(inp.dims) == [3, size, size] and list(out.dims) == [7]
    post = parse(f"{preset}_postprocess")
    assert post.name == f"{preset}_postprocess"
    assert json.loads((repo / f"{preset}_postprocess" / "1" / "labels.json").read_text()) == SEVEN
    pre = parse(f"{preset}_preprocess")
    assert json.loads(pre.parameters["preprocessing"].string_value)["input_size"] == [3, size, size]


# ------------------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def headless_checkpoint(timm, tmp_path_factory):
    path = tmp_path_factory.mktemp("headless") / "features.pth"
    torch.save(timm.create_model("convit_tiny", num_classes=0, img_size=64).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "num-classes-vs-head",
        "image-size-vs-grid",
        "labels-length",
        "labels-for-features",
        "hf-num-classes-vs-head",
        "hvt-size-not-multiple-of-16",
        "hvt-too-small-to-pool",
    ],
)
def test_bad_inputs_are_one_line_exit_2_and_write_nothing(
    case, timm_ten, headless_checkpoint, hf_flowers, tmp_path
):
    _, ckpt, _ = timm_ten
    _, hf_dir = hf_flowers
    three = _write_labels(tmp_path / "three.txt", ["a", "b", "c"])
    args, words = {
        "num-classes-vs-head": (
            ["convit_tiny", "--weights", ckpt, "--num-classes", 5],
            ["--num-classes 5", "num_classes 10", "head.fc.weight"],
        ),
        "image-size-vs-grid": (
            ["convit_tiny", "--weights", ckpt, "--image-size", 96],
            ["--image-size 96", "image_size 64", "pos_embed"],
        ),
        "labels-length": (
            ["convit_tiny", "--weights", ckpt, "--labels", three],
            ["3 labels", "10 classes"],
        ),
        "labels-for-features": (
            ["convit_tiny", "--weights", headless_checkpoint, "--labels", three],
            ["3 labels", "headless"],
        ),
        "hf-num-classes-vs-head": (
            ["cvt_13", "--weights", hf_dir, "--num-classes", 1000],
            ["--num-classes 1000", "num_classes 5"],
        ),
        "hvt-size-not-multiple-of-16": (["hvt_ti_1", "--image-size", 100], ["100", "16"]),
        "hvt-too-small-to-pool": (["hvt_s_4", "--image-size", 64], ["pool"]),
    }[case]
    out = tmp_path / "out"
    r = _cli("export", *args, "--out", out)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and not r.stdout.strip()
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
