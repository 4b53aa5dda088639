"""FP16 graph (the TensorRT 11 way) verified on CPU, and the engine stage where TensorRT is missing."""

import json
import stat

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import FAMILY_CASES
from onnx import TensorProto

from deploykit.cli import cli
from deploykit.core.onnx_io import serialize
from deploykit.engine.device import tensorrt_available
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms.fp16 import FP32_OPS, OVERFLOW_LIMIT, SCREEN_LIMIT, make_fp16, torch_peak
from deploykit.transforms.onnx_export import export_onnx


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_fp16_graph_meets_targets(exported, name):
    result = exported[name]
    m = result.manifest
    half = m["parity"]["fp16"]
    logits = half["outputs"]["logits"]
    assert half["passed"], half["failures"]
    assert logits["samples"] >= 64
    assert logits["cosine_min"] >= 0.999
    assert logits["top1_decisive"] >= 0.99 and logits["nonfinite"] == 0
    assert m["fp16"]["size_ratio"] <= 0.52
    assert m["fp16"]["lint"]["violations"] == []
    assert m["artifacts"]["model.fp16.onnx"]["bytes"] <= 0.52 * m["artifacts"]["model.onnx"]["bytes"]


def _value_types(proto):
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def test_fp32_islands_really_are_fp32(exported):
    proto = onnx.load(str(exported["cvt_13"].out_dir / "model.fp16.onnx"))
    types = _value_types(proto)
    islands = [n for n in proto.graph.node if n.op_type in FP32_OPS]
    assert any(n.op_type == "LayerNormalization" for n in islands) and any(
        n.op_type == "Softmax" for n in islands
    )
    for node in islands:
        for name in node.input:
            if name:
                assert types[name] == TensorProto.FLOAT, (
                    f"{node.name} ({node.op_type}) input {name} is not FP32"
                )
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert sum(types.get(n.input[1]) == TensorProto.FLOAT16 for n in matmuls) > len(matmuls) / 2
    # FP32 graph I/O by default
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    kept = exported["cvt_13"].manifest["fp16"]["kept_fp32"]
    assert all(k["reason"] for k in kept) and {k["op"] for k in kept} >= {"LayerNormalization", "Softmax"}


class Overflowing(torch.nn.Module):
    """Activations of ~1e6 after ``big``: finite in FP32, infinite in FP16."""

    def __init__(self):
        super().__init__()
        self.big = torch.nn.Linear(8, 8)
        self.small = torch.nn.Linear(8, 4)
        with torch.no_grad():
            self.big.weight.mul_(1e6)
            self.small.weight.mul_(1e-6)

    def forward(self, x):
        return self.small(torch.relu(self.big(x.flatten(1))))


def test_sensitivity_check_keeps_overflowing_node_fp32():
    model = Overflowing().eval()
    proto = export_onnx(model, (2, 2, 2), 18, "torchscript")
    images = np.random.default_rng(0).standard_normal((64, 2, 2, 2)).astype(np.float32)
    reference = model(torch.from_numpy(images)).detach().numpy()

    def passes(logits):
        return bool(
            np.isfinite(logits).all() and np.abs(logits - reference).max() < 1e-2 * np.abs(reference).max()
        )

    converted, report = make_fp16(proto, images, reference, passes)
    kept = [k for k in report.kept_fp32 if k["reason"].startswith("range check")]
    assert kept, report.kept_fp32
    assert all(float(k["reason"].split("= ")[1].split()[0]) >= OVERFLOW_LIMIT for k in kept)
    # the producer, the Relu (its range derived, not measured) and the consumer that reads the overflowing
    # tensor all stay FP32: an FP16 consumer would get the kept producer's output cast to FP16, i.e. inf
    assert sorted(k["op"] for k in kept) == ["Gemm", "Gemm", "Relu"], kept
    assert report.range_tensors == 2  # the two Gemm outputs; Flatten and Relu derived
    types = _value_types(converted)
    for node in converted.graph.node:
        if node.op_type in ("Gemm", "Relu"):
            assert all(types[i] == TensorProto.FLOAT for i in node.input if i), node.name
    out = OrtRunner(serialize(converted)).run(images)
    assert np.isfinite(out).all() and passes(out)
    # without the range check the same conversion overflows: the check is what saves it
    from deploykit.transforms.fp16 import _name_nodes, convert

    _name_nodes(proto)
    naive = OrtRunner(serialize(convert(proto, set()))).run(images)
    assert not passes(naive)


def test_range_screen_runs_the_probe_only_near_the_limit():
    model = Overflowing().eval()
    proto = export_onnx(model, (2, 2, 2), 18, "torchscript")
    images = np.random.default_rng(0).standard_normal((16, 2, 2, 2)).astype(np.float32)
    reference = model(torch.from_numpy(images)).detach().numpy()
    peak = torch_peak(model, images)
    assert peak >= OVERFLOW_LIMIT  # the screen sees the ~1e6 activations of `big`

    def passes(logits):
        return bool(np.isfinite(logits).all())

    screened = make_fp16(proto, images, reference, passes, range_screen=peak)[1]
    probed = make_fp16(proto, images, reference, passes)[1]
    assert screened.range_tensors == probed.range_tensors == 2 and screened.kept_fp32 == probed.kept_fp32
    # below the screen's limit the probe is skipped, and nothing is kept FP32 for range
    skipped = make_fp16(proto, images, reference, passes, range_screen=SCREEN_LIMIT / 2)[1]
    assert skipped.range_tensors == 0 and "activation ranges" not in skipped.timings_s
    assert not [k for k in skipped.kept_fp32 if k["reason"].startswith("range check")]


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_range_screen_sees_what_the_graph_computes(exported, name):
    """The screen's premise, on every family: PyTorch's max |x| over its op outputs is the ONNX graph's
    max over every tensor (measured or bounded) — not merely within the screen's margin."""
    from deploykit.transforms import rewrites
    from deploykit.transforms.fp16 import activation_ranges
    from deploykit.validation import validation_batch
    from deploykit.workflows.export.model import build_model
    from deploykit.workflows.export.products import RANGE_IMAGES

    result = exported[name]
    model, _ = build_model(name, FAMILY_CASES[name])
    rewritten, _ = rewrites.apply_rewrites(model)
    images = validation_batch(model.data_config, RANGE_IMAGES, 0, None).images
    peaks, measured = activation_ranges(onnx.load(str(result.onnx_path)), images)
    assert measured > 0
    assert max(peaks.values()) == pytest.approx(torch_peak(rewritten, images), rel=1e-3)
    assert result.manifest["fp16"]["range_screen"] < SCREEN_LIMIT


def test_fp16_io_option(tmp_path):
    from dataclasses import replace

    from exporting import export_preset

    from deploykit.core.config import default_config

    cfg = replace(default_config("hvt"), image_size=64, exporter="torchscript")
    result = export_preset("hvt_ti_1", tmp_path / "o", cfg, fp16=True, fp16_io=True)
    proto = onnx.load(str(tmp_path / "o" / "model.fp16.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert result.manifest["fp16"]["io"] == "fp16" and result.parity["fp16"].passed


@pytest.mark.skipif(tensorrt_available()[0], reason="checks the path taken where TensorRT/GPU is missing")
def test_engine_stage_without_tensorrt(exported, tmp_path):
    result = exported["hvt_s_4"]
    engine = result.manifest["engine"]
    assert engine["status"].startswith("skipped: ") and "\n" not in engine["status"]
    script = result.out_dir / "build_engine.sh"
    assert engine["script"] == "build_engine.sh" and engine["source"] == "model.fp16.onnx"
    assert script.stat().st_mode & stat.S_IXUSR
    text = script.read_text()
    for flag in (
        "--onnx=model.fp16.onnx",
        "--saveEngine=model.engine",
        "--minShapes=input:1x3x128x128",
        "--optShapes=input:1x3x128x128",
        "--maxShapes=input:32x3x128x128",
        "--memPoolSize=workspace:4096M",
        "--timingCacheFile=timing.cache",
        "--builderOptimizationLevel=3",
    ):
        assert flag in text
    flags = [line.strip() for line in text.splitlines() if line.strip().startswith("--")]
    assert not any(f.startswith(("--fp16", "--stronglyTyped")) for f in flags)  # removed in TensorRT 11
    assert json.loads(result.manifest_path.read_text())["artifacts"]["build_engine.sh"]["sha256"]

    r = CliRunner().invoke(
        cli,
        ["build", str(result.out_dir / "model.fp16.onnx"), "--batch", "1,4,16", "--out", str(tmp_path / "b")],
    )
    assert r.exit_code == 3, r.output
    assert r.output.count("\n") == 1 and "engine not built" in r.output
    text = (tmp_path / "b" / "build_engine.sh").read_text()
    assert "--minShapes=input:1x3x128x128" in text and "--optShapes=input:4x3x128x128" in text
    assert "--maxShapes=input:16x3x128x128" in text


def test_weights_to_fp16_is_the_libraries_conversion_bit_for_bit(exported):
    """deploykit's one-pass weight conversion gives the library's own values bit for bit — on the edge cases
    of its clipping (float32, and float64 as the library reads ``float_data``) and on a whole model:
    :func:`convert` (the converter run on emptied initializers, the weights converted after it) writes what
    the library writes alone."""
    import warnings

    from onnxconverter_common import float16

    from deploykit.transforms.fp16 import _name_nodes, convert
    from deploykit.transforms.fp16_weights import weights_to_fp16

    edges = [0.0, -0.0, 1e-7, -1e-7, 5e-8, -5e-8, 1e-45, -1e-45, np.inf, -np.inf, np.nan]
    edges += [1e4, -1e4, 2e4, -2e4, 65504.0, 7e4, -7e4, 3.4e38, -3.4e38]
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(50_000) * 10.0 ** rng.integers(-12, 9, 50_000)
    arrays = [np.array(edges, np.float32), spread.astype(np.float32), np.zeros(5, np.float32)]
    for values in [*arrays, np.array(edges, np.float64), spread]:
        for limit in (1e4, 65504.0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = float16.convert_np_to_float16(values.copy(), 1e-7, limit)
            ours = weights_to_fp16(values.copy(), 1e-7, limit)
            assert ours.dtype == np.float16 and np.array_equal(ours.view(np.uint16), theirs.view(np.uint16))
    proto = onnx.load(str(exported["hvt_s_4"].onnx_path))
    _name_nodes(proto)
    converted = convert(proto, set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = float16.convert_float_to_float16(
            onnx.load_from_string(serialize(proto)),
            keep_io_types=True,
            op_block_list=list(FP32_OPS),
            node_block_list=[],
            max_finite_val=65504.0,
            disable_shape_infer=True,
        )
    assert serialize(converted) == serialize(plain)


def _patched_convert(proto, block_nodes, fp16_io=False):
    """The conversion as deploykit did it before issue 27: the library's per-tensor weight conversion swapped,
    for the duration of the call, for ``weights_to_fp16`` (``unittest.mock`` is fine in a test)."""
    import contextlib
    import io
    import warnings
    from unittest import mock

    from onnxconverter_common import float16

    from deploykit.core.scopes import types_declared
    from deploykit.transforms.fp16_weights import weights_to_fp16

    src = onnx.ModelProto()
    src.CopyFrom(proto)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        mock.patch.object(float16, "convert_np_to_float16", weights_to_fp16),
    ):
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(
            src,
            keep_io_types=not fp16_io,
            op_block_list=list(FP32_OPS),
            node_block_list=sorted(block_nodes),
            max_finite_val=65504.0,
            disable_shape_infer=types_declared(src),
        )


@pytest.mark.parametrize("name", ["cvt_13", "hvt_s_4"])
def test_convert_writes_the_bytes_of_the_patched_conversion(exported, name):
    """No patching any more: :func:`convert` gives byte for byte what the patched converter gave, on two
    families' graphs prepared as ``make_fp16`` prepares them, with nothing, one segment or every segment
    kept FP32, FP32 or FP16 I/O, and with the converter's shape inference on."""
    from deploykit.transforms.fp16 import _prepare, convert, segments

    fp32 = _prepare(onnx.load(str(exported[name].onnx_path)))[0]
    groups = segments(fp32)
    everything = {n for group in groups for n in group}
    for block, fp16_io in ((set(), False), (set(groups[len(groups) // 2]), False), (everything, True)):
        assert serialize(convert(fp32, block, fp16_io)) == serialize(_patched_convert(fp32, block, fp16_io))
    del fp32.graph.value_info[:]  # types no longer declared: the converter runs ONNX shape inference
    assert serialize(convert(fp32, set())) == serialize(_patched_convert(fp32, set()))
