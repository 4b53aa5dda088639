"""INT8 on the trained references (tests/data/reference, made by scripts/train_reference.py): both INT8
graphs keep held-out accuracy and top-1 agreement, Q/DQ sits only where the design says, the TensorRT lint is
clean, a broken weight scale is caught and named, and bad calibration input is one line with nothing written.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from exporting import CALIB, FAMILIES, HELDOUT, REFERENCES, export_reference
from onnx import numpy_helper

from deploykit.cli import cli
from deploykit.core.config import default_config
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.preprocess import Preprocessing
from deploykit.transforms import int8 as q
from deploykit.transforms.lint import lint_model
from deploykit.validation.calibration import calibration_set
from deploykit.workflows.export.model import prepare_model


def _export(family: str, out: Path, **options):
    return export_reference(family, out, **options)


@pytest.fixture(scope="session")
def heldout():
    """The held-out digits, preprocessed as the references' artifacts record it."""
    pre = Preprocessing(
        input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0
    )
    found = calibration_set(HELDOUT, pre, count=360, num_classes=10)
    return found.eval_images, found.eval_labels


def _predict(path: Path, images: np.ndarray) -> np.ndarray:
    runner = OrtRunner(str(path))
    return np.concatenate([runner.run(images[i : i + 60]) for i in range(0, len(images), 60)])


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_keeps_heldout_accuracy(int8_exports, heldout, family):
    images, labels = heldout
    out = int8_exports[family].out_dir
    fp32 = _predict(out / "model.onnx", images).argmax(1)
    accuracy = float((fp32 == labels).mean())
    recorded = json.loads((REFERENCES / "accuracy.json").read_text())[family]["heldout_accuracy"]
    assert abs(accuracy - recorded) <= 1 / 360 + 1e-9  # the FP32 artifact computes the trained model
    for name in ("model.int8.onnx", "model.int8.cpu.onnx"):
        predicted = _predict(out / name, images).argmax(1)
        assert float((predicted == labels).mean()) >= accuracy - 0.01, name
        assert float((predicted == fp32).mean()) >= 0.98, name


def _consumers(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_qdq_sits_only_on_linear_layers(int8_exports, family):
    """Walk the graph: every DequantizeLinear feeds input 0 (activation, per-tensor, from a Q) or input 1
    (an int8 weight initializer, per output channel) of a MatMul/Gemm/Conv with a constant weight; never a
    bias, LayerNorm, Softmax, GELU, residual Add or an attention product; zero points are 0; scales have
    the dtype of what they quantize."""
    path = int8_exports[family].out_dir / "model.int8.onnx"
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = _consumers(proto)
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    quantized_layers = set()
    for node in dq:
        for user in consumers[node.output[0]]:
            assert user.op_type in q.QUANTIZABLE, f"{node.name} feeds {user.op_type} {user.name}"
            slot = list(user.input).index(node.output[0])
            assert slot in (0, 1), f"{node.name} feeds input {slot} (a bias?) of {user.name}"
            quantized_layers.add(user.name)
        scale, zero = inits[node.input[1]], inits[node.input[2]]
        assert not np.any(zero) and zero.dtype == np.int8
        if node.input[0] in inits:  # a weight
            weight = inits[node.input[0]]
            assert weight.dtype == np.int8 and np.abs(weight).max() <= 127
            axis = next(a.i for a in node.attribute if a.name == "axis")
            assert scale.shape == (weight.shape[axis],)
        else:  # an activation: DQ(Q(x)) with one scale
            quant = producer[node.input[0]]
            assert quant.op_type == "QuantizeLinear" and scale.shape == ()
            assert quant.input[1] == node.input[1]
    # every linear layer of the FP16 graph is quantized; no activation x activation product is
    fp16 = onnx.load(str(int8_exports[family].out_dir / "model.fp16.onnx"))
    linear = {t.node for t in q.quantizable(fp16)}
    kept = {n for b in int8_exports[family].manifest["int8"]["tensorrt"]["kept_blocks"] for n in [b["block"]]}
    assert quantized_layers <= linear
    if not kept:
        assert quantized_layers == linear
    products = [
        n
        for n in fp16.graph.node
        if n.op_type == "MatMul" and not any(i in {x.name for x in fp16.graph.initializer} for i in n.input)
    ]
    assert products and not quantized_layers & {n.name for n in products}
    assert lint_model(proto).violations == []


def test_manifest_and_cli_validate(int8_exports):
    result = int8_exports["convit"]
    info = result.manifest["int8"]
    assert info["calibration"]["method"] == "entropy" and info["calibration"]["images"] == 32
    assert info["accuracy"]["fp32"] - info["accuracy"]["int8"] <= 0.01
    assert set(result.manifest["artifacts"]) >= {"model.int8.onnx", "model.int8.cpu.onnx"}
    script = (result.out_dir / "build_engine.sh").read_text()
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert any("model.int8.onnx" in line for line in commands)
    assert not any("--int8" in line for line in commands)  # explicit quantization: no calibrator, no flag
    for name in ("model.int8.onnx", "model.int8.cpu.onnx"):
        run = CliRunner().invoke(cli, ["validate", str(result.out_dir / name)])
        assert run.exit_code == 0, run.output
        assert "int8" in run.output


def _block_nodes(proto: onnx.ModelProto, block: str) -> list[str]:
    return q.group_by_block(q.node_blocks(proto))[block]


def test_broken_scale_is_kept_by_sensitivity(int8_exports, tmp_path):
    """A weight quantizer's scale x100 in one block fails the first try; the sensitivity step keeps that
    block (first) in higher precision and the export passes."""
    fp16 = onnx.load(str(int8_exports["hvt"].out_dir / "model.fp16.onnx"))
    block = "encoder.blocks.2"
    node = _block_nodes(fp16, block)[-1]  # the MLP's output layer
    result = _export("hvt", tmp_path / "broken", weight_scale={node: 100.0})
    info = result.manifest["int8"]["tensorrt"]
    assert not info["first_try"]["passed"]
    assert info["kept_blocks"][0]["block"] == block
    assert info["final"]["passed"]


def test_broken_scale_fails_validate_and_locate_names_the_block(int8_exports, tmp_path):
    """validate --locate on a Q/DQ graph whose weight scale was multiplied by 100 in one block, checked on
    in-distribution images (--inputs: module outputs of a digits model on photographs drift by design)."""
    out = int8_exports["convit"].out_dir
    proto = onnx.load(str(out / "model.int8.onnx"))
    block = "encoder.blocks.3"
    node = _block_nodes(onnx.load(str(out / "model.fp16.onnx")), block)[-1]
    scale = next(i for i in proto.graph.initializer if i.name == f"{node}_weight_int8_scale")
    broken = numpy_helper.to_array(scale) * np.float16(100)
    scale.CopyFrom(numpy_helper.from_array(broken.astype(np.float16), scale.name))
    path = tmp_path / "model.int8.onnx"
    onnx.save(proto, str(path))
    (tmp_path / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    flat = tmp_path / "digits"
    flat.mkdir()
    for image in sorted(HELDOUT.glob("*/*.png"))[::6]:
        (flat / image.name).write_bytes(image.read_bytes())
    run = CliRunner().invoke(cli, ["validate", str(path), "--locate", "--inputs", str(flat)])
    assert run.exit_code == 1, run.output
    assert f"first divergence: {block}." in run.output
    clean = CliRunner().invoke(cli, ["validate", str(out / "model.int8.onnx"), "--inputs", str(flat)])
    assert clean.exit_code == 0, clean.output


def _bad_calib(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "not-images":
        (folder / "notes.txt").write_text("not an image")
        (folder / "a.png").write_bytes(
            (CALIB / "0" / sorted(p.name for p in (CALIB / "0").iterdir())[0]).read_bytes()
        )
    if kind == "too-few":
        for p in sorted((CALIB / "1").iterdir())[:3]:
            (folder / p.name).write_bytes(p.read_bytes())
    if kind == "corrupt":
        (folder / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


@pytest.mark.parametrize("kind", ["empty", "not-images", "too-few", "corrupt", "missing"])
def test_bad_calibration_input_is_one_line_and_writes_nothing(tmp_path, kind):
    folder = _bad_calib(tmp_path, kind) if kind != "missing" else tmp_path / "nowhere"
    out = tmp_path / "out"
    run = CliRunner().invoke(
        cli,
        [
            "export",
            "convit",
            "--weights",
            str(REFERENCES / "convit.safetensors"),
            "--int8",
            "--calib",
            str(folder),
            "--calib-count",
            "8",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert run.exit_code == 2, run.output
    lines = [line for line in run.output.splitlines() if line.strip() and not line.startswith("warning")]
    assert len(lines) == 1 and "calib" in lines[0], run.output
    assert not out.exists()


def test_calibration_flags_need_int8(tmp_path):
    run = CliRunner().invoke(cli, ["export", "convit", "--calib", str(CALIB), "--out", str(tmp_path / "o")])
    assert run.exit_code == 2 and "--calib needs --int8" in run.output


def test_reference_checkpoints_rebuild_their_architecture():
    """The fixtures are small configurations: the checkpoint header carries them (and labels,
    preprocessing), so a family name and --weights are all an export needs."""
    for family in FAMILIES:
        prepared = prepare_model(
            family, config=default_config(family), weights=REFERENCES / f"{family}.safetensors"
        )
        recorded = json.loads((REFERENCES / "accuracy.json").read_text())[family]
        assert prepared.spec.name == recorded["preset"]
        assert {k: v for k, v in prepared.model_args.items()} == recorded["model_args"]
        assert prepared.labels == tuple(str(i) for i in range(10))
        assert prepared.model.data_config.crop_pct == 1.0
    assert sum(p.stat().st_size for p in REFERENCES.glob("*.safetensors")) <= 20e6


def test_int8_files_validate_without_torch(int8_exports):
    """The golden reference carries images of the calibration folder for the INT8 files: both validate
    with torch unimportable, on those images, with the stored INT8 tolerances."""
    import subprocess
    import sys

    from deploykit.validation.reference import read_reference

    out = int8_exports["ceit"].out_dir
    golden = read_reference(out / "reference.npz")
    assert golden.int8_images is not None and golden.int8_images.shape == (16, 64, 64, 3)
    code = "import sys; sys.modules['torch'] = None; from deploykit.cli import main; sys.argv[0] = 'deploykit'; main()"
    for name in ("model.int8.onnx", "model.int8.cpu.onnx"):
        run = subprocess.run(
            [sys.executable, "-c", code, "validate", str(out / name)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "(int8" in run.stdout and "over 16 images" in run.stdout
