"""The engine builder (TensorRT 10.3+ and 11.x): the inspector parsing behind the FP16 layer share, a
one-line EngineUnavailableError (exit code 3) without TensorRT or a GPU, and the version branches of the
build run against fakes of ``tensorrt`` and ``cuda.bindings.runtime`` that record the calls
(tests/fakes.py): creation flags, TF32 off, the profile, the timing cache, the sidecar, the FP16 gate.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
from fakes import PREPROCESSING, exported_like_onnx, install_fakes, tiny_onnx

from deploykit.core.config import BatchProfile
from deploykit.core.errors import ArtifactError, EngineUnavailableError
from deploykit.core.io import ordinary_mode, sha256_file
from deploykit.engine.builder import build_engine, onnx_input
from deploykit.engine.device import tensorrt_available
from deploykit.engine.errors import EngineError, EnginePrecisionError
from deploykit.engine.inspection import fp16_layer_share, int8_layer_count


def _tensor(name: str, dtype: str) -> dict:
    fmt = {"Half": "FP16", "Float": "FP32", "Int32": "Int32"}[dtype]
    return {"Name": name, "Dimensions": [1, 8], "Format": f"Row major linear {fmt}", "DataType": dtype}


def _info(dtypes: list[str], out_dtype: str = "Float") -> dict:
    layers = [
        {"Name": f"layer{i}", "LayerType": "Myelin", "Inputs": [], "Outputs": [_tensor(f"t{i}", d)]}
        for i, d in enumerate(dtypes)
    ]
    layers.append({"Name": "cast_out", "Outputs": [_tensor("logits", out_dtype)]})
    io = [
        {"Name": "input", "IOMode": "Input", "DataType": "Float"},
        {"Name": "logits", "IOMode": "Output", "DataType": out_dtype},
    ]
    return {"Layers": layers, "I/O Tensors": io}


def test_fp16_share_tensorrt11_layout():
    share, fp16, counted = fp16_layer_share(_info(["Half"] * 9 + ["Float"] + ["Int32"] * 3))
    assert (fp16, counted) == (9, 10) and share == pytest.approx(0.9)  # int layers and the FP32 output cast
    assert fp16_layer_share(_info(["Float"] * 4))[0] == 0.0


def test_fp16_share_tensorrt10_layout():
    layers = [
        {"Name": "a", "Outputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "b", "Outputs": [{"Name": "y", "Format/Datatype": "Channel major FP32 format"}]},
        {"Name": "c", "Outputs": [{"Name": "logits", "Format/Datatype": "Row major linear FP32 format"}]},
    ]
    assert fp16_layer_share({"Layers": layers, "Bindings": ["input", "logits"]}) == (0.5, 1, 2)


def test_int8_layers_in_both_inspector_layouts():
    # 11.x: DataType "Int8"; 10.x: the type token of "Format/Datatype"; inputs count as well as outputs
    layers = [
        {"Name": "q", "Outputs": [{"Name": "xq", "DataType": "Int8"}]},
        {
            "Name": "conv",
            "Inputs": [{"Name": "xq", "Format/Datatype": "Channel major INT8 format"}],
            "Outputs": [{"Name": "c", "Format/Datatype": "Row major linear FP16 format"}],
        },
        {"Name": "ln", "Outputs": [{"Name": "n", "DataType": "Half"}]},
        {"Name": "mask", "Outputs": [{"Name": "m", "DataType": "UInt8"}]},
    ]
    assert int8_layer_count({"Layers": layers}) == 2
    assert int8_layer_count(_info(["Half"] * 3)) == 0
    # the int8 quantize layer is no floating layer; the conv's FP16 output is an FP16 layer
    assert fp16_layer_share({"Layers": layers}) == (2 / 2, 2, 2)


def test_fp16_share_needs_detailed_verbosity():
    with pytest.raises(EngineError, match="DETAILED"):
        fp16_layer_share({"Layers": ["layer0", "layer1"]})
    with pytest.raises(EngineError, match="Layers"):
        fp16_layer_share({})


# --------------------------------------------------------------------------- without TensorRT / GPU
def test_onnx_input_reads_name_and_chw(tmp_path: Path):
    assert onnx_input(tiny_onnx(tmp_path / "m.onnx")) == ("input", (3, 16, 16))


def test_build_engine_without_tensorrt_raises_exit_code_3(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    ok, reason = tensorrt_available()
    assert not ok and "\n" not in reason and reason
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(EngineUnavailableError) as info:
        build_engine(onnx_path, tmp_path / "model.engine", batch=BatchProfile(min=1, opt=1, max=4))
    assert info.value.exit_code == 3
    assert str(info.value) == reason and "\n" not in str(info.value)
    assert not (tmp_path / "model.engine").exists()


def test_this_machine_reports_a_one_line_reason():
    ok, reason = tensorrt_available()
    assert reason and "\n" not in reason
    if ok:
        pytest.skip(f"TensorRT is available here ({reason})")


# ------------------------------------------------------------------- fakes: TensorRT 10.3 / 11.4 paths
@pytest.mark.parametrize(
    ("version", "flags", "strongly_typed"),
    [
        ("10.3.0.26", 1 << 1, "creation flag STRONGLY_TYPED"),  # JetPack 6: weak typing unless asked
        ("10.16.1.11", 1 << 1, "creation flag STRONGLY_TYPED"),
        ("11.4.0.106", 0, "always (TensorRT 11)"),  # the flag is deprecated and ignored: not passed
    ],
)
def test_build_engine_version_branches(tmp_path: Path, monkeypatch, version, flags, strongly_typed):
    trt, _ = install_fakes(monkeypatch, version, layer_dtypes=["Float"] * 3)
    onnx_path = exported_like_onnx(tmp_path / "model.onnx")
    result = build_engine(
        onnx_path,
        tmp_path / "model.engine",
        batch=BatchProfile(min=1, opt=2, max=8),
        workspace_mib=512,
        opt_level=4,
        timing_cache=tmp_path / "t.cache",
    )
    names = [c[0] for c in trt.calls]
    assert ("create_network", flags) in trt.calls and names.count("create_network") == 1
    assert ("clear_flag", "TF32") in trt.calls  # FP32 layers really run FP32
    assert ("set_memory_pool_limit", "WORKSPACE", 512 << 20) in trt.calls
    assert ("config.builder_optimization_level", 4) in trt.calls
    assert ("set_shape", "input", (1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16)) in trt.calls
    assert names.index("clear_flag") < names.index("build_serialized_network")
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["tensorrt"] == version and sidecar["strongly_typed"] == strongly_typed
    assert sidecar["tf32"] is False and sidecar["precision"] == "fp32"
    assert sidecar["gpu"] == {"name": "Fake Orin", "compute_capability": "8.7", "memory_mib": 8192}
    assert sidecar["preprocessing"] == PREPROCESSING  # predict can run the engine alone
    assert result.engine_path.read_bytes() == f"ENGINE trt={version} flags={flags}".encode()
    assert (tmp_path / "t.cache").read_bytes().startswith(b"CACHE")
    assert stat.S_IMODE(result.engine_path.stat().st_mode) == ordinary_mode()


def test_build_engine_sidecar_describes_the_build(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "11.4.0.106", layer_dtypes=["Half"] * 3 + ["Float"])
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    result = build_engine(
        onnx_path, tmp_path / "m.engine", batch=BatchProfile(min=2, opt=4, max=6), opt_level=5
    )
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert result.sidecar == sidecar and result.sidecar_path == tmp_path / "m.engine.json"
    assert sidecar["profile"] == {
        "input": "input",
        "min": [2, 3, 16, 16],
        "opt": [4, 3, 16, 16],
        "max": [6, 3, 16, 16],
    }
    assert sidecar["layers"] == {"fp16": 3, "int8": 0, "floating": 4, "total": 4}
    assert sidecar["fp16_layer_share"] == 0.75
    assert sidecar["workspace_mib"] == 4096 and sidecar["builder_optimization_level"] == 5
    assert sidecar["source_onnx"] == {"file": "model.onnx", "sha256": sha256_file(onnx_path)}
    engine = result.engine_path.read_bytes()
    assert sidecar["engine"]["bytes"] == len(engine) and sidecar["engine"]["sha256"] == sha256_file(
        result.engine_path
    )
    # no timing cache asked for, no preprocessing recorded in the graph
    assert (
        sidecar["timing_cache"] is None and result.timing_cache is None and sidecar["preprocessing"] is None
    )


def test_build_engine_timing_cache_reused_or_restarted(tmp_path: Path, monkeypatch):
    trt, _ = install_fakes(monkeypatch, "10.3.0.26")
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    cache = tmp_path / "timing.cache"

    def build(name: str):
        return build_engine(
            onnx_path, tmp_path / name, batch=BatchProfile(min=1, opt=1, max=4), timing_cache=cache
        )

    first = build("a.engine")  # no file yet: an empty cache, written back after the build
    assert not first.timing_cache_loaded and first.notes == [] and cache.read_bytes() == b"CACHE"
    second = build("b.engine")  # this builder's own cache: loaded
    assert second.timing_cache_loaded and second.sidecar["timing_cache"] == {
        "file": "timing.cache",
        "loaded": True,
    }
    assert ("set_timing_cache", b"CACHE", False) in trt.calls  # mismatches are not ignored
    cache.write_bytes(b"made on another GPU")
    third = build("c.engine")  # refused by the builder: started empty, with a note, and replaced
    assert not third.timing_cache_loaded and third.sidecar["timing_cache"]["loaded"] is False
    assert third.notes == ["timing cache timing.cache was made on another device/version; started empty"]
    assert third.sidecar["notes"] == third.notes and cache.read_bytes() == b"CACHE"


def test_build_engine_refuses_unreadable_or_dynamic_onnx(tmp_path: Path, monkeypatch):
    from onnx import TensorProto, helper

    trt, _ = install_fakes(monkeypatch, "11.4.0.106")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf\xff\xff")
    with pytest.raises(ArtifactError, match="corrupt.onnx is not a readable ONNX file") as info:
        build_engine(corrupt, tmp_path / "x.engine", batch=BatchProfile(min=1, opt=1, max=1))
    assert info.value.exit_code == 2 and "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match="ONNX file not found"):
        build_engine(
            tmp_path / "missing.onnx", tmp_path / "x.engine", batch=BatchProfile(min=1, opt=1, max=1)
        )
    dims = ["batch", 3, "height", 16]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "dynamic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)],
    )
    dynamic = tmp_path / "dynamic.onnx"
    dynamic.write_bytes(helper.make_model(graph).SerializeToString())
    with pytest.raises(EngineError, match="must be \\(batch, C, H, W\\) with static C, H, W"):
        build_engine(dynamic, tmp_path / "x.engine", batch=BatchProfile(min=1, opt=1, max=1))
    assert not any(c[0] == "Builder" for c in trt.calls) and not (tmp_path / "x.engine").exists()


def test_build_engine_fp16_share_gate_with_fakes(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "10.3.0.26", layer_dtypes=["Half"] * 9 + ["Float"])
    onnx_path = exported_like_onnx(tmp_path / "model.onnx")
    built = build_engine(
        onnx_path, tmp_path / "a.engine", batch=BatchProfile(min=1, opt=1, max=4), expect_fp16=True
    )
    assert built.sidecar["precision"] == "fp16" and built.fp16_share == pytest.approx(0.9)
    install_fakes(monkeypatch, "10.3.0.26", layer_dtypes=["Half"] * 8 + ["Float"] * 2)
    with pytest.raises(EnginePrecisionError, match="came out FP32") as info:
        build_engine(
            onnx_path, tmp_path / "b.engine", batch=BatchProfile(min=1, opt=1, max=4), expect_fp16=True
        )
    assert info.value.exit_code == 1
    assert not (tmp_path / "b.engine").exists() and not (tmp_path / "b.engine.json").exists()


@pytest.mark.parametrize(
    ("version", "devices", "ok", "message"),
    [
        ("10.3.0.26", 1, True, "TensorRT 10.3.0.26 on Fake Orin"),
        ("11.4.0.106", 1, True, "TensorRT 11.4.0.106 on Fake Orin"),
        ("10.2.0.19", 1, False, "needs TensorRT 10.3 or newer"),
        ("8.6.1", 1, False, "needs TensorRT 10.3 or newer"),
        ("10.3.0.26", 0, False, "no CUDA GPU is visible (cudaGetDeviceCount: fake error 35)"),
    ],
)
def test_tensorrt_available_checks_version_and_gpu(monkeypatch, version, devices, ok, message):
    install_fakes(monkeypatch, version, devices=devices)
    got_ok, reason = tensorrt_available()
    assert got_ok is ok and message in reason and "\n" not in reason
