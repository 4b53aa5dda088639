"""The artifact knows what it is: the preset, the classes and resolution, the class names and the weights it
was exported with travel with it (ONNX metadata, the engine's sidecar, manifest.json), so ``validate``,
``bench``, ``predict``, ``triton`` and the engine build take them from it instead of asking again, and say
when a flag contradicts them or when the weights were random.

Two small real exports of hvt_ti_1 with 7 classes: random weights at 160 px, and a weights file with class
names at 64 px.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from deploykit import load
from deploykit.cli import cli
from deploykit.core.config import default_config
from deploykit.core.record import write_metadata
from deploykit.models import create_model
from deploykit.workflows.export.model import state_sha256

PRESET = "hvt_ti_1"
NAMES = ["apple", "banana", "cherry", "date", "elderberry", "fig", "grape"]
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the real photographs")
PHOTOS = [Path(skimage_data.data_dir) / f for f in ("chelsea.png", "coffee.png")]


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _weights(path: Path, seed: int, size: int = 64) -> Path:
    torch.manual_seed(seed)
    torch.save(create_model(PRESET, num_classes=7, image_size=size).state_dict(), path)
    return path


def _one_error_line(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: "), r.output
    return r.output.strip()


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from exporting import export_preset

    root = tmp_path_factory.mktemp("identity")
    config = dataclasses.replace(default_config("hvt"), num_classes=7, exporter="torchscript")
    weights = _weights(root / "w7.pth", seed=3)
    labels = root / "names.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    random160 = export_preset(PRESET, root / "random160", dataclasses.replace(config, image_size=160))
    named64 = export_preset(
        PRESET, root / "named64", dataclasses.replace(config, image_size=64), weights=weights, labels=labels
    )
    return {"random": random160, "named": named64, "weights": weights, "root": root}


def _copy(result, target: Path, **manifest_changes) -> Path:
    """The export's model.onnx with its manifest.json (changed) in ``target``."""
    target.mkdir()
    shutil.copy(result.onnx_path, target / "model.onnx")
    manifest = json.loads(result.manifest_path.read_text()) | manifest_changes
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target / "model.onnx"


# ----------------------------------------------------------------------------------------- validate
def test_validate_needs_neither_model_nor_weights(exports, tmp_path):
    for key, size in (("random", 160), ("named", 64)):
        result = exports[key]
        r = _cli("validate", result.onnx_path, "--json", tmp_path / f"{key}.json")
        assert r.exit_code == 0, r.output
        assert r.output.startswith(f"PASS {result.onnx_path} vs {PRESET} (fp32,")
        report = json.loads((tmp_path / f"{key}.json").read_text())
        assert report["model_args"] == {"num_classes": 7, "image_size": size}
        assert report["random_weights"] is (key == "random")
    weights = json.loads((tmp_path / "named.json").read_text())["weights"]
    assert weights["path"] == str(exports["weights"]) and weights["format"] == "deploykit"


def test_validate_with_a_contradicting_model_is_a_usage_error(exports):
    line = _one_error_line(_cli("validate", exports["named"].onnx_path, "--model", "cvt_13"))
    assert "--model cvt_13" in line and f"exported from {PRESET}" in line


def test_validate_with_other_weights_names_both_hashes(exports, tmp_path):
    other = _weights(tmp_path / "other.pth", seed=4)
    model = create_model(PRESET, num_classes=7, image_size=64)
    model.load_state_dict(torch.load(other))
    recorded = _meta(exports["named"].onnx_path)["deploykit.weights_state_sha256"]
    line = _one_error_line(_cli("validate", exports["named"].onnx_path, "--weights", other))
    assert state_sha256(model)[:12] in line and recorded[:12] in line and str(other) in line

    # weights of another resolution: the checkpoint's position grid contradicts the artifact's
    line = _one_error_line(_cli("validate", exports["random"].onnx_path, "--weights", other))
    assert "do not fit" in line and "image_size 160" in line and "means image_size 64" in line

    # weights given for an artifact exported with random ones
    other160 = _weights(tmp_path / "other160.pth", seed=4, size=160)
    line = _one_error_line(_cli("validate", exports["random"].onnx_path, "--weights", other160))
    assert "random weights" in line and str(other160) in line


def test_validate_without_the_recorded_weights_file(exports, tmp_path):
    named, weights = exports["named"], exports["weights"]
    recorded = json.loads(named.manifest_path.read_text())["weights"]
    gone = tmp_path / "moved" / "w7.pth"
    artifact = _copy(named, tmp_path / "a", weights=recorded | {"path": str(gone)})
    line = _one_error_line(_cli("validate", artifact))
    assert str(gone) in line and recorded["sha256"][:12] in line and "--weights" in line
    r = _cli("validate", artifact, "--weights", weights)  # the same weights, from where they are now
    assert r.exit_code == 0 and r.output.startswith("PASS"), r.output

    # the recorded file is there but holds other weights now
    changed = _weights(tmp_path / "w7.pth", seed=5)
    artifact = _copy(named, tmp_path / "b", weights=recorded | {"path": str(changed)})
    line = _one_error_line(_cli("validate", artifact))
    assert "changed since" in line and str(changed) in line and recorded["sha256"][:12] in line


def test_validate_an_export_of_a_model_in_memory(exports, tmp_path):
    named = exports["named"]
    manifest = json.loads(named.manifest_path.read_text())
    artifact = _copy(named, tmp_path / "m", weights=None, model=manifest["model"] | {"weights": "memory"})
    line = _one_error_line(_cli("validate", artifact))
    assert "model in memory" in line and "state_dict" in line and "--weights" in line
    r = _cli("validate", artifact, "--weights", exports["weights"])
    assert r.exit_code == 0 and r.output.startswith("PASS"), r.output


# ------------------------------------------------------------------------------------------ predict
def test_predict_uses_the_artifacts_names(exports, tmp_path):
    named = exports["named"]
    r = _cli("predict", named.onnx_path, *PHOTOS, "--top-k", 3, "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # real weights: no warning
    rows = json.loads((tmp_path / "p.json").read_text())
    for row in rows:
        assert [t["label"] for t in row["topk"]] == [NAMES[t["class"]] for t in row["topk"]]
    assert rows[0]["topk"][0]["label"] in r.stdout

    # --labels at predict time wins (and its length is checked)
    mine = tmp_path / "mine.txt"
    mine.write_text("".join(f"mine-{i}\n" for i in range(7)))
    r = _cli("predict", named.onnx_path, PHOTOS[0], "--labels", mine, "--json", tmp_path / "q.json")
    assert r.exit_code == 0, r.output
    top = json.loads((tmp_path / "q.json").read_text())[0]["topk"]
    assert [t["label"] for t in top] == [f"mine-{t['class']}" for t in top]
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    line = _one_error_line(_cli("predict", named.onnx_path, PHOTOS[0], "--labels", short))
    assert "2 labels given for a model with 7 classes" in line

    predictor = load(named.onnx_path)
    assert predictor.labels == tuple(NAMES) and predictor.random_weights is False
    assert predictor.record.preset == PRESET
    assert predictor.record.model_args == {"num_classes": 7, "image_size": 64}


def test_predict_warns_once_on_random_weights(exports, tmp_path):
    random = exports["random"]
    r = _cli("predict", random.onnx_path, *PHOTOS, "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "random weights" in warnings[0]
    assert "meaningless" in warnings[0] and "warning" not in r.stdout
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 2 and all(t["label"] == f"class {t['class']}" for t in rows[0]["topk"])
    assert load(random.onnx_path).random_weights is True
    # a bad input is still one error line (the warning comes once the images were read)
    line = _one_error_line(_cli("predict", random.onnx_path, tmp_path / "missing.jpg"))
    assert "image not found" in line


def test_predict_refuses_a_headless_artifact(exports, tmp_path):
    proto = onnx.load(str(exports["random"].onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    write_metadata(proto, meta | {"deploykit.model_args": json.dumps({"num_classes": 0, "image_size": 160})})
    headless = tmp_path / "features.onnx"
    onnx.save(proto, str(headless))
    line = _one_error_line(_cli("predict", headless, PHOTOS[0]))
    assert "headless" in line and "features, not classes" in line


# ------------------------------------------------------------------------------- triton, engine, report
def test_triton_repository_takes_dims_and_names_from_the_artifact(exports, tmp_path):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed")
    from google.protobuf import text_format

    def config(repo: Path, model: str):
        return text_format.Parse((repo / model / "config.pbtxt").read_text(), pb2.ModelConfig())

    r = _cli("triton", exports["random"].out_dir, "--repo", tmp_path / "r1")
    assert r.exit_code == 0, r.output
    main = config(tmp_path / "r1", PRESET)
    assert list(main.input[0].dims) == [3, 160, 160] and list(main.output[0].dims) == [7]
    assert list(config(tmp_path / "r1", f"{PRESET}_postprocess").input[0].dims) == [7]
    labels = json.loads((tmp_path / "r1" / f"{PRESET}_postprocess" / "1" / "labels.json").read_text())
    assert labels == [f"class {i}" for i in range(7)]

    r = _cli("triton", exports["named"].out_dir, "--repo", tmp_path / "r2", "--top-k", 3)
    assert r.exit_code == 0, r.output
    assert list(config(tmp_path / "r2", PRESET).input[0].dims) == [3, 64, 64]
    labels_file = tmp_path / "r2" / f"{PRESET}_postprocess" / "1" / "labels.json"
    assert json.loads(labels_file.read_text()) == NAMES

    mine = tmp_path / "mine.txt"  # --labels still wins
    mine.write_text("".join(f"mine-{i}\n" for i in range(7)))
    r = _cli("triton", exports["named"].out_dir, "--repo", tmp_path / "r3", "--labels", mine)
    assert r.exit_code == 0, r.output
    labels_file = tmp_path / "r3" / f"{PRESET}_postprocess" / "1" / "labels.json"
    assert json.loads(labels_file.read_text()) == [f"mine-{i}" for i in range(7)]


def test_engine_sidecar_records_the_model(exports, tmp_path, monkeypatch):
    from fakes import fake_engine_file, install_fakes

    from deploykit.core.config import BatchProfile
    from deploykit.engine.builder import build_engine

    install_fakes(monkeypatch, "11.4.0.106", classes=7)
    named, random = exports["named"], exports["random"]
    meta = _meta(named.onnx_path)
    result = build_engine(named.onnx_path, tmp_path / "named.engine", batch=BatchProfile(min=1, opt=1, max=2))
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["preset"] == PRESET and sidecar["model_args"] == {"num_classes": 7, "image_size": 64}
    assert sidecar["labels"] == NAMES and sidecar["random_weights"] is False
    assert sidecar["weights_state_sha256"] == meta["deploykit.weights_state_sha256"]
    predictor = load(result.engine_path)  # no manifest beside it: the sidecar alone
    assert predictor.labels == tuple(NAMES) and predictor.random_weights is False

    result = build_engine(
        random.onnx_path, tmp_path / "random.engine", batch=BatchProfile(min=1, opt=1, max=2)
    )
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["labels"] is None and sidecar["random_weights"] is True
    assert sidecar["model_args"] == {"num_classes": 7, "image_size": 160}
    assert load(result.engine_path).random_weights is True

    # an engine whose sidecar records no model: the manifest.json beside it does
    directory = tmp_path / "old"
    _copy(named, directory)
    engine = fake_engine_file(directory, "11.4.0.106")
    predictor = load(engine)
    assert predictor.labels == tuple(NAMES) and predictor.preprocessing.input_size == (3, 64, 64)


def test_report_says_when_the_weights_are_random(exports):
    random_page = (exports["random"].out_dir / "report.html").read_text()
    named_page = (exports["named"].out_dir / "report.html").read_text()
    assert "Random weights" in random_page and "160 px" in random_page
    assert "Random weights" not in named_page
    assert str(exports["weights"]) in named_page and "apple, banana" in named_page


def test_bench_rebuilds_the_recorded_model(exports, tmp_path):
    from deploykit.workflows.bench.run import _eager_model

    named, random = exports["named"], exports["random"]
    model = _eager_model(named.out_dir, True)
    assert state_sha256(model) == _meta(named.onnx_path)["deploykit.weights_state_sha256"]
    assert model.num_classes == 7 and tuple(model.input_size) == (3, 64, 64)
    assert tuple(_eager_model(random.out_dir, False).input_size) == (3, 160, 160)

    other = _weights(tmp_path / "other.pth", seed=4)
    with pytest.raises(Exception, match="are not the weights") as info:
        _eager_model(named.out_dir, True, other)
    assert info.type.__name__ == "ConfigError"
