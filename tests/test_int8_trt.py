"""INT8 engines from explicitly quantized graphs (``model.int8.onnx``: QuantizeLinear/DequantizeLinear pairs),
checked without TensorRT: the TensorRT-parser lint's Q/DQ rules (one broken graph per rule; the helpers are
tests/test_lint.py's), the graph is recognised as ``int8``, the builder makes it strongly typed with no
INT8 builder flag and no calibrator (fakes of TensorRT 10.3 and 11.4, tests/fakes.py), every TensorRT name
it touches exists in both real bindings, the engine is ``model.int8.engine`` with ``precision: "int8"``, and
where TensorRT is missing ``build_engine.sh`` builds it with trtexec, strongly typed, never ``--int8``.
"""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from fakes import exported_like_onnx, install_fakes, qdq_onnx, tiny_onnx
from onnx import TensorProto, helper, numpy_helper
from test_engine_api import _identifiers
from test_lint import _ints, _model, _only

from deploykit.core.config import BatchProfile, ExportConfig
from deploykit.core.errors import ConfigError
from deploykit.core.onnx_io import load_onnx
from deploykit.core.record import variant_of
from deploykit.engine.builder import build_engine
from deploykit.transforms.lint import format_report, lint_model
from deploykit.workflows.build import build_or_script, export_engine_info

# ------------------------------------------------------------------- the lint: explicit quantization (Q/DQ)


def _qdq_matmul(
    *,
    opset=19,
    float_type=np.float16,
    quant_type=np.int8,
    act_zero=0,
    weight_scales=4,
    weight_axis=1,
    computed_scale=False,
):
    """x (1, 3, 8) -> Q/DQ (per-tensor) -> MatMul with an int8 (8, 4) weight -> DQ (per-channel, axis 1).

    As deploykit's INT8 graph writes it: symmetric (zero points 0), constant scales, the scale type the
    float type of the graph around it; the keyword arguments break one rule each."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(float_type))
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(act_zero, quant_type), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (8, 4)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(weight_scales, 0.01, float_type), "w_scale"),
        numpy_helper.from_array(np.zeros(weight_scales, np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq_x"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=weight_axis
        ),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="mm"),
    ]
    inputs = [("x", elem, [1, 3, 8])]
    if computed_scale:  # the activation scale computed from the input at run time
        nodes.insert(0, helper.make_node("ReduceMax", ["x"], ["x_scale"], name="amax", keepdims=0))
    else:
        inits.append(numpy_helper.from_array(np.array(0.05, float_type), "x_scale"))
    return _model(nodes, inputs, [("y", elem, [1, 3, 4])], inits, opset=opset)


@pytest.mark.parametrize(("opset", "float_type"), [(19, np.float16), (19, np.float32), (13, np.float32)])
def test_qdq_matmul_as_deploykit_writes_it_is_clean(opset, float_type):
    model = _qdq_matmul(opset=opset, float_type=float_type)
    onnx.checker.check_model(model, full_check=True)
    report = lint_model(model)
    assert report.ok, format_report(report)
    # and it is a graph a runtime executes: Q/DQ MatMul against the float MatMul of the dequantized weight
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(float_type)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    w = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float32) * 0.01
    xq = np.clip(np.round(x.astype(np.float32) / np.float32(float_type(0.05))), -128, 127)
    ref = (xq * np.float32(float_type(0.05))) @ w
    np.testing.assert_allclose(y.astype(np.float32), ref, rtol=1e-2, atol=1e-2)


def test_qdq_conv_and_gemm_weights_per_output_channel_are_clean():
    # axis 0 = output channel: Conv weights (O, I, kh, kw) and Gemm with transB=1 (N, K)
    rng = np.random.default_rng(0)
    f16 = TensorProto.FLOAT16
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float16), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(rng.integers(-127, 128, (6, 3, 2, 2)).astype(np.int8), "conv_q"),
        numpy_helper.from_array(np.full(6, 0.01, np.float16), "conv_s"),
        numpy_helper.from_array(rng.integers(-127, 128, (5, 24)).astype(np.int8), "fc_q"),
        numpy_helper.from_array(np.full(5, 0.01, np.float16), "fc_s"),
        numpy_helper.from_array(np.zeros(5, np.float16), "fc_b"),
        _ints("flat", [1, 24]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["conv_q", "conv_s"], ["cw"], name="dq_cw", axis=0),
        helper.make_node("Conv", ["xd", "cw"], ["c"], name="conv", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
        helper.make_node("QuantizeLinear", ["f", "s", "z"], ["fq"], name="q_f"),
        helper.make_node("DequantizeLinear", ["fq", "s", "z"], ["fd"], name="dq_f"),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_s"], ["fw"], name="dq_fw", axis=0),
        helper.make_node("Gemm", ["fd", "fw", "fc_b"], ["y"], name="fc", transB=1),
    ]
    model = _model(nodes, [("x", f16, [1, 3, 4, 4])], [("y", f16, [1, 5])], inits, opset=19)
    onnx.checker.check_model(model, full_check=True)
    assert lint_model(model).ok, format_report(lint_model(model))


def test_qdq_nonzero_zero_point_is_flagged():
    report = lint_model(_qdq_matmul(act_zero=3))  # one zero point shared by the activation's Q and DQ
    assert [(v.node, v.rule) for v in report.violations] == [("q_x", "zero-point"), ("dq_x", "zero-point")]
    assert "`y_zero_point` must be zero" in report.violations[0].message


def test_qdq_computed_zero_point_is_flagged():
    model = _qdq_matmul()
    model.graph.input.append(helper.make_tensor_value_info("zp", TensorProto.INT8, []))
    model.graph.node[2].input[2] = "zp"  # the weight's DQ takes its zero point from a graph input
    v = _only(lint_model(model), "zero-point")
    assert v.node == "dq_w" and "computed at run time" in v.message


def test_qdq_uint8_is_flagged():
    report = lint_model(_qdq_matmul(quant_type=np.uint8))
    assert [(v.node, v.rule) for v in report.violations] == [("q_x", "dtype"), ("dq_x", "dtype")]
    assert "`x_q` is UINT8" in report.violations[0].message


def test_qdq_without_zero_point_before_opset21_quantizes_to_uint8():
    # ONNX's default output type of QuantizeLinear without a zero point is uint8: not TensorRT's int8
    model = _qdq_matmul()
    for node in model.graph.node[:2]:
        del node.input[2]
    assert {(v.node, v.rule) for v in lint_model(model).violations} == {("q_x", "dtype"), ("dq_x", "dtype")}


def test_qdq_computed_scale_is_flagged():
    report = lint_model(_qdq_matmul(computed_scale=True))
    assert [(v.node, v.rule) for v in report.violations] == [("q_x", "scale-const"), ("dq_x", "scale-const")]
    assert "`y_scale` must be a constant" in report.violations[0].message


def test_qdq_wrong_per_channel_length_is_flagged():
    v = _only(lint_model(_qdq_matmul(weight_scales=3)), "scale-shape")
    assert v.node == "dq_w" and "has 3 values, but axis 1 of `w_q` has 4" in v.message


def test_qdq_bad_axis_is_flagged():
    v = _only(lint_model(_qdq_matmul(weight_axis=2)), "qdq-axis")
    assert v.node == "dq_w" and "`axis`=2 is outside [-2, 1]" in v.message


def test_qdq_half_scale_needs_opset19():
    report = lint_model(_qdq_matmul(opset=17))
    assert {v.rule for v in report.violations} == {"scale-dtype"}
    assert {v.node for v in report.violations} == {"q_x", "dq_x", "dq_w"}
    assert "needs opset 19 or newer" in report.violations[0].message


def test_qdq_per_tensor_scale_of_one_value_is_per_tensor():
    # a one-value 1-D scale scales every element alike, whatever `axis` says
    model = _qdq_matmul(weight_scales=1, weight_axis=0)
    assert lint_model(model).ok, format_report(lint_model(model))


# ------------------------------------------------------------------------------ the engine: model.int8.engine
#: the layers the fake inspector reports for the Q/DQ graph: quantize, int8 conv (FP16 out), pool, cast
INT8_LAYERS = ["Int8", "Half", "Half", "Float"]


def test_qdq_graph_is_int8_whatever_its_metadata_says(tmp_path: Path):
    path = qdq_onnx(tmp_path / "model.int8.onnx", metadata={"deploykit.precision": "fp16"})
    assert variant_of(proto=load_onnx(path)) == "int8"  # a quantized graph may keep the FP16 graph's metadata
    assert variant_of(proto=load_onnx(tiny_onnx(tmp_path / "model.onnx"))) == "fp32"
    # the graph as the INT8 export writes it passes the TensorRT-parser lint (Q/DQ rules included)
    report = lint_model(path)
    assert report.ok, format_report(report)


@pytest.mark.parametrize(
    ("version", "flags", "strongly_typed"),
    [("10.3.0.26", 1 << 1, "creation flag STRONGLY_TYPED"), ("11.4.0.106", 0, "always (TensorRT 11)")],
)
def test_qdq_graph_builds_strongly_typed_without_int8_flag_or_calibrator(
    tmp_path: Path, monkeypatch, version, flags, strongly_typed
):
    trt, _ = install_fakes(monkeypatch, version, layer_dtypes=INT8_LAYERS)
    onnx_path = qdq_onnx(tmp_path / "model.int8.onnx")
    result = build_engine(onnx_path, tmp_path / "model.int8.engine", batch=BatchProfile(min=1, opt=4, max=8))
    names = [c[0] for c in trt.calls]
    # 10.x: the STRONGLY_TYPED creation flag; 11.x: nothing (always strongly typed)
    assert ("create_network", flags) in trt.calls and names.count("create_network") == 1
    # no builder flag turned on (BuilderFlag.INT8 is implicit quantization), only TF32 cleared
    assert "set_flag" not in names and [c for c in trt.calls if c[0] == "clear_flag"] == [
        ("clear_flag", "TF32")
    ]
    # the only config properties set: no int8_calibrator, no quantization flags
    assert {n for n in names if n.startswith("config.")} == {
        "config.builder_optimization_level",
        "config.profiling_verbosity",
    }
    sidecar = json.loads((tmp_path / "model.int8.engine.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["strongly_typed"] == strongly_typed
    assert sidecar["layers"] == {"fp16": 2, "int8": 1, "floating": 3, "total": 4}
    assert sidecar["source_onnx"]["file"] == "model.int8.onnx" and result.notes == []
    # every TensorRT name the build touched (module attributes and the methods/properties called on its
    # objects) exists in both real bindings
    used = trt.accessed | {n.removeprefix("config.") for n in names}
    used |= {a.name for c in trt.calls for a in c[1:] if isinstance(a, enum.Enum)}  # DETAILED, ...
    used |= {c[1] for c in trt.calls if c[0] in ("clear_flag", "set_memory_pool_limit")}  # TF32, WORKSPACE
    assert {"Builder", "OnnxParser", "TF32", "WORKSPACE", "DETAILED", "create_network"} <= used
    for binding in ("10.3", "11.4"):
        assert not used - _identifiers(binding), (
            f"not in TensorRT {binding}: {sorted(used - _identifiers(binding))}"
        )


def test_int8_engine_without_visible_int8_layers_gets_a_note(tmp_path: Path, monkeypatch):
    # a Myelin node shows only its outer (FP16) tensors: the engine is still recorded int8, with a note
    install_fakes(monkeypatch, "11.4.0.106", layer_dtypes=["Half"] * 3)
    result = build_engine(
        qdq_onnx(tmp_path / "model.int8.onnx"), tmp_path / "e.engine", batch=BatchProfile(min=1, opt=1, max=1)
    )
    assert result.sidecar["precision"] == "int8" and result.sidecar["layers"]["int8"] == 0
    assert result.notes == [
        "the engine inspector shows no INT8 tensor (Q/DQ fused into nodes it does not detail?)"
    ]


def _engine_step(tmp_path: Path, **kwargs):
    """The export's engine stage as publish.stage_engine calls it, plus the INT8 graph as an extra build."""
    source = exported_like_onnx(tmp_path / "model.onnx")
    qdq_onnx(tmp_path / "model.int8.onnx")
    return build_or_script(
        source,
        engine_path=tmp_path / "model.engine",
        config=ExportConfig(family="any", batch=BatchProfile(min=1, opt=2, max=8)),
        timing_cache=tmp_path / "timing.cache",
        script_cache_name="timing.cache",
        input_name="input",
        input_chw=(3, 16, 16),
        expect_fp16=False,
        extra_builds=[(tmp_path / "model.int8.onnx", tmp_path / "model.int8.engine")],
        **kwargs,
    )


def test_engine_step_scripts_the_int8_engine_without_tensorrt(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    outcome = _engine_step(tmp_path)
    assert outcome.result is None and outcome.extra == (("model.int8.onnx", "model.int8.engine"),)
    text = outcome.script.read_text()
    assert "    --onnx=model.onnx \\\n    --saveEngine=model.engine \\\n" in text
    assert "    --onnx=model.int8.onnx \\\n    --saveEngine=model.int8.engine \\\n" in text
    assert "--int8" not in "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    info = export_engine_info(outcome, "model.onnx")
    assert info["status"].startswith("skipped: ") and info["script"] == "build_engine.sh"
    assert info["also"] == [{"source": "model.int8.onnx", "engine": "model.int8.engine"}]


def test_engine_step_builds_the_int8_engine_after_the_first(tmp_path: Path, monkeypatch):
    trt, _ = install_fakes(monkeypatch, "10.3.0.26", layer_dtypes=INT8_LAYERS)
    outcome = _engine_step(tmp_path)
    assert [c[1] for c in trt.calls if c[0] == "parse_from_file"] == [
        str(tmp_path / "model.onnx"),
        str(tmp_path / "model.int8.onnx"),
    ]
    assert [c for c in trt.calls if c[0] == "create_network"] == [("create_network", 1 << 1)] * 2
    info = export_engine_info(outcome, "model.onnx")
    assert info["files"] == [
        "model.engine",
        "model.engine.json",
        "model.int8.engine",
        "model.int8.engine.json",
    ]
    assert info["precision"] == "fp32"  # the fake's layers are not FP16 enough for the first engine
    (also,) = info["also"]
    assert (also["source"], also["engine"], also["precision"]) == (
        "model.int8.onnx",
        "model.int8.engine",
        "int8",
    )
    assert also["files"] == ["model.int8.engine", "model.int8.engine.json"]
    assert all((tmp_path / name).is_file() for name in info["files"])


def test_engine_step_keeps_extra_builds_in_the_export_folder(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    source = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="extra builds stay beside"):
        build_or_script(
            source,
            engine_path=tmp_path / "model.engine",
            config=ExportConfig(family="any"),
            timing_cache=None,
            script_cache_name="timing.cache",
            input_name="input",
            input_chw=(3, 16, 16),
            expect_fp16=False,
            extra_builds=[(tmp_path / "other" / "model.int8.onnx", tmp_path / "model.int8.engine")],
        )


def test_deploykit_build_int8_without_tensorrt_writes_the_script(tmp_path: Path, monkeypatch):
    from deploykit.cli import cli

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path = qdq_onnx(tmp_path / "model.int8.onnx")
    r = CliRunner().invoke(cli, ["build", str(onnx_path), "--batch", "1,4,16"])
    assert r.exit_code == 3, r.output
    text = (tmp_path / "build_engine.sh").read_text()
    assert "    --onnx=model.int8.onnx \\\n    --saveEngine=model.int8.engine \\\n" in text
    assert "--optShapes=input:4x3x16x16" in text and "no calibration cache" in text


def test_deploykit_build_int8_with_tensorrt(tmp_path: Path, monkeypatch):
    from deploykit.cli import cli

    trt, _ = install_fakes(monkeypatch, "11.4.0.106", layer_dtypes=INT8_LAYERS)
    onnx_path = qdq_onnx(tmp_path / "model.int8.onnx")
    r = CliRunner().invoke(cli, ["build", str(onnx_path)])
    assert r.exit_code == 0, r.output
    assert f"built {tmp_path / 'model.int8.engine'} (int8," in r.output
    sidecar = json.loads((tmp_path / "model.int8.engine.json").read_text())
    assert sidecar["precision"] == "int8" and ("create_network", 0) in trt.calls
    assert onnx.load(str(onnx_path)).opset_import[0].version == 19
