"""The TensorRT 11 engine stage.

Everywhere: the engine code uses only names that exist in the TensorRT 11 Python bindings (the committed
identifier list from tensorrt_cu13_bindings, checked with ``ast`` — no TensorRT needed) and none of the
APIs TensorRT 11 removed; build_engine.sh carries the exact trtexec 11 flags; the inspector parsing; and
a one-line EngineUnavailableError (exit code 3) without TensorRT or a GPU.
With TensorRT 11 and a CUDA GPU (``gpu`` + ``trt`` markers, skipped with the reason otherwise): real
builds, the FP16 layer share, parity against PyTorch and timing-cache reuse.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit.engine import builder as engine_builder
from deploykit.engine.builder import (
    FP16_SHARE_MIN,
    EngineError,
    build_engine,
    fp16_layer_share,
    onnx_input,
    tensorrt_available,
)
from deploykit.engine.script import SCRIPT_NAME, write_build_script
from deploykit.errors import EngineUnavailableError
from deploykit.export.config import BatchProfile, default_config
from deploykit.validation.metrics import Tolerances

ENGINE_DIR = Path(engine_builder.__file__).parent
IDENTIFIERS = Path(__file__).parent / "data" / "tensorrt11_identifiers.txt"
#: variables (or ``self.`` attributes, leading underscores ignored) that hold TensorRT objects
TRT_OBJECTS = {
    "builder",
    "network",
    "config",
    "parser",
    "profile",
    "engine",
    "context",
    "inspector",
    "runtime",
    "cache",
    "error",
    "logger",
    "serialized",
}
#: APIs removed (or deprecated and ignored) in TensorRT 11 ("Removed Python APIs and Replacements")
REMOVED = {
    "BuilderFlag",  # every precision flag (FP16, INT8, BF16, FP8, INT4, FP4, OBEY/PREFER_PRECISION_...)
    "set_flag",
    "device_memory_size",
    "get_device_memory_size_for_profile",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "int8_calibrator",
    "set_quantization_flag",
    "EXPLICIT_BATCH",
    "STRONGLY_TYPED",  # deprecated in 11.0: retained for compatibility but ignored
    "max_workspace_size",
    "execute_async_v2",
    "get_binding_shape",
    "binding_is_input",
}


# -------------------------------------------------------------------------------- identifier checks
def _identifiers() -> set[str]:
    lines = IDENTIFIERS.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _modules() -> list[Path]:
    return sorted(ENGINE_DIR.glob("*.py"))


def _trt_chains(tree: ast.AST) -> list[list[str]]:
    """Maximal attribute chains rooted at the name ``trt``: ``trt.MemoryPoolType.WORKSPACE`` -> [..]."""
    chains, inner = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                inner.add(id(cur.value))
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                chains.append(parts[::-1])
    return chains


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id.lstrip("_")
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr.lstrip("_")
    return None


def _trt_object_members(tree: ast.AST) -> set[str]:
    """Attributes read, written or called on variables holding TensorRT objects (``config.x``, ...)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and _receiver(node.value) in TRT_OBJECTS
    }


def _declared(tree: ast.Module) -> tuple[str, ...] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "TRT_API_USED" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return None


def test_identifier_list_is_from_tensorrt11_bindings():
    text = IDENTIFIERS.read_text(encoding="utf-8")
    assert IDENTIFIERS.stat().st_size < 1_500_000
    assert text.startswith("# ") and "tensorrt_cu13_bindings 11." in text.splitlines()[0]
    ids = _identifiers()
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == sorted(set(body)), "identifier list must be sorted and deduplicated"
    # TensorRT 11 facts the list must reflect: the core API is there, the removed one is not
    assert {"Builder", "OnnxParser", "build_serialized_network", "execute_async_v3", "Runtime"} <= ids
    assert {"device_memory_size_v2", "get_engine_information", "set_timing_cache"} <= ids
    assert not {"FP16", "device_memory_size", "platform_has_fast_fp16", "EXPLICIT_BATCH"} & ids
    assert not {"int8_calibrator", "OBEY_PRECISION_CONSTRAINTS"} & ids


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_attribute_chains_exist_in_tensorrt11(path: Path):
    ids = _identifiers()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = {".".join(c) for c in _trt_chains(tree) if not set(c) <= ids}
    assert not missing, f"{path.name}: not in the TensorRT 11 bindings: {sorted(missing)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_api_used_is_complete_and_exists(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    chains = _trt_chains(tree)
    members = _trt_object_members(tree)
    declared = _declared(tree)
    if declared is None:
        assert not chains and not members, f"{path.name} uses TensorRT but declares no TRT_API_USED"
        return
    assert len(declared) == len(set(declared)), f"{path.name}: duplicates in TRT_API_USED"
    unknown = sorted(set(declared) - _identifiers())
    assert not unknown, f"{path.name}: TRT_API_USED names not in the TensorRT 11 bindings: {unknown}"
    used = {name for chain in chains for name in chain} | members
    undeclared = sorted(used - set(declared))
    assert not undeclared, f"{path.name}: TensorRT names used but not listed in TRT_API_USED: {undeclared}"
    unused = sorted(set(declared) - used)
    assert not unused, f"{path.name}: TRT_API_USED lists names the code does not use: {unused}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_api_removed_in_tensorrt11(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & REMOVED, f"{path.name} uses APIs removed in TensorRT 11: {sorted(names & REMOVED)}"


def test_engine_package_imports_without_tensorrt():
    code = "import sys, deploykit.engine, deploykit.engine.runner; assert 'tensorrt' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ build_engine.sh
def _script(tmp_path: Path, reason: str = "TensorRT is not importable (ImportError: no module)") -> Path:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"")
    return write_build_script(
        onnx_path,
        BatchProfile(1, 4, 32),
        "input",
        (3, 224, 224),
        workspace_mib=4096,
        opt_level=3,
        timing_cache_name="timing.cache",
        engine_name="model.engine",
        reason=reason,
    )


EXPECTED_ARGS = [
    "--onnx=model.onnx",
    "--saveEngine=model.engine",
    "--minShapes=input:1x3x224x224",
    "--optShapes=input:4x3x224x224",
    "--maxShapes=input:32x3x224x224",
    "--memPoolSize=workspace:4096M",
    "--builderOptimizationLevel=3",
    "--timingCacheFile=timing.cache",
]


def test_build_script_flags_and_shapes(tmp_path: Path):
    path = _script(tmp_path)
    assert path == tmp_path / SCRIPT_NAME
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail\n" in text and 'cd "$(dirname "$0")"\n' in text
    for arg in EXPECTED_ARGS:
        assert f"    {arg} \\\n" in text
    assert "engines must be built on the target device" in text.replace("\n# ", " ")
    assert "TensorRT is not importable (ImportError: no module)" in text
    flags = [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]
    # TensorRT 11 trtexec: precision flags and --stronglyTyped are gone, --workspace since 10.x
    for removed in ("--fp16", "--int8", "--bf16", "--best", "--stronglyTyped", "--workspace"):
        assert not any(f == removed or f.startswith(removed + "=") for f in flags)


def test_build_script_is_executable_and_valid_bash(tmp_path: Path):
    path = _script(tmp_path, reason="no CUDA GPU\nsecond line; $(rm -rf /)")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    subprocess.run(["bash", "-n", str(path)], check=True)
    comment = [line for line in path.read_text().splitlines() if "no CUDA GPU" in line]
    assert len(comment) == 1 and comment[0].startswith("#")  # a multi-line reason stays one comment line
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def test_build_script_runs_trtexec_from_its_own_directory(tmp_path: Path):
    path = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "trtexec"
    fake.write_text('#!/usr/bin/env bash\npwd\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        ["bash", str(path), "--verbose"], cwd="/", env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert Path(out[0]).resolve() == tmp_path.resolve()
    assert out[1:] == [*EXPECTED_ARGS, "--verbose"]


# ----------------------------------------------------------------------------------- inspector parsing
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


def test_fp16_share_needs_detailed_verbosity():
    with pytest.raises(EngineError, match="DETAILED"):
        fp16_layer_share({"Layers": ["layer0", "layer1"]})
    with pytest.raises(EngineError, match="Layers"):
        fp16_layer_share({})


# --------------------------------------------------------------------------- without TensorRT / GPU
def _tiny_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"], name="relu0")],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 16, 16])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_input_reads_name_and_chw(tmp_path: Path):
    assert onnx_input(_tiny_onnx(tmp_path / "m.onnx")) == ("input", (3, 16, 16))


def test_build_engine_without_tensorrt_raises_exit_code_3(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    ok, reason = tensorrt_available()
    assert not ok and "\n" not in reason and reason
    onnx_path = _tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(EngineUnavailableError) as info:
        build_engine(onnx_path, tmp_path / "model.engine", BatchProfile(1, 1, 4))
    assert info.value.exit_code == 3
    assert str(info.value) == reason and "\n" not in str(info.value)
    assert not (tmp_path / "model.engine").exists()


def test_runner_without_tensorrt_raises_exit_code_3(tmp_path: Path, monkeypatch):
    from deploykit.engine.runner import TensorRTRunner

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(EngineUnavailableError) as info:
        TensorRTRunner(engine)
    assert info.value.exit_code == 3


def test_this_machine_reports_a_one_line_reason():
    ok, reason = tensorrt_available()
    assert reason and "\n" not in reason
    if ok:
        pytest.skip(f"TensorRT is available here ({reason})")


# ------------------------------------------------------------------------------ TensorRT 11 + CUDA GPU
_TRT_OK, _TRT_REASON = tensorrt_available()
PRESET, FAMILY = "convit_tiny", "convit"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not _TRT_OK:
        pytest.skip(f"needs TensorRT 11 and a CUDA GPU: {_TRT_REASON}")
    from deploykit.export.pipeline import run_export

    config = dataclasses.replace(default_config(FAMILY), image_size=64, batch=BatchProfile(1, 2, 8))
    out = tmp_path_factory.mktemp("engine")
    result = run_export(PRESET, out, config=config)
    return result, config


def _reference(config, count: int = 16):
    from deploykit.export.pipeline import build_model
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.torch_runner import TorchRunner
    from deploykit.validation import validation_batch

    model, _ = build_model(PRESET, config.image_size, None, config.seed)
    images = validation_batch(model.data_config, count, config.seed).images
    return images, run_batched(TorchRunner(model), images, config.batch.max)


def _parity(runner, config, tolerances: Tolerances):
    from deploykit.runtime.base import run_batched
    from deploykit.validation import compare_outputs

    images, reference = _reference(config)
    candidate = run_batched(runner, images, config.batch.max)
    return compare_outputs({"logits": reference}, {"logits": candidate}, tolerances)


#: TensorRT runs FP32 layers as TF32 unless told otherwise, so an FP32 engine is held to this, not to the
#: 1e-4 of the ONNX stages (the CLI's validate gate still applies the family's fp32 tolerances)
TF32 = Tolerances(max_abs=1e-2, min_cosine=0.9999, min_top1=0.99, min_top5=None)


@pytest.mark.gpu
@pytest.mark.trt
def test_fp32_engine_builds_with_sidecar_and_matches_torch(exported, tmp_path: Path):
    from deploykit.engine.runner import TensorRTRunner

    result, config = exported
    engine = tmp_path / "model.engine"
    built = build_engine(result.onnx_path, engine, config.batch, 1024, 3, tmp_path / "timing.cache")
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["profile"] == {
        "input": "input",
        "min": [1, 3, 64, 64],
        "opt": [2, 3, 64, 64],
        "max": [8, 3, 64, 64],
    }
    assert sidecar["tensorrt"].startswith("11.") and sidecar["gpu"]["compute_capability"]
    assert sidecar["precision"] == "fp32" and sidecar["fp16_layer_share"] < FP16_SHARE_MIN
    assert sidecar["source_onnx"]["sha256"] and sidecar["engine"]["bytes"] == engine.stat().st_size
    assert built.sidecar == sidecar and (tmp_path / "timing.cache").stat().st_size > 0

    runner = TensorRTRunner(engine)
    assert runner.precision == "fp32"
    parity = _parity(runner, config, TF32)
    assert parity.passed, parity.worst()


@pytest.mark.gpu
@pytest.mark.trt
def test_fp16_engine_is_fp16_and_matches_torch(exported, tmp_path: Path):
    fp16 = pytest.importorskip("deploykit.export.fp16", reason="deploykit.export.fp16 is not available")
    if not hasattr(fp16, "make_fp16"):
        pytest.skip("deploykit.export.fp16.make_fp16 is not available")
    from deploykit.validation import compare_outputs

    result, config = exported
    images, reference = _reference(config)

    def passes(logits: np.ndarray) -> bool:
        return compare_outputs({"logits": reference}, {"logits": logits}, config.fp16).passed

    proto, _ = fp16.make_fp16(onnx.load(str(result.onnx_path)), images, reference, passes)
    fp16_onnx = tmp_path / "model_fp16.onnx"
    onnx.save(proto, str(fp16_onnx))
    engine = tmp_path / "model_fp16.engine"
    built = build_engine(fp16_onnx, engine, config.batch, 1024, 3, None, expect_fp16=True)
    assert built.fp16_share >= FP16_SHARE_MIN
    assert built.sidecar["precision"] == "fp16"

    from deploykit.engine.runner import TensorRTRunner

    runner = TensorRTRunner(engine)
    assert runner.precision == "fp16"
    parity = _parity(runner, config, config.fp16)
    assert parity.passed, parity.worst()


@pytest.mark.gpu
@pytest.mark.trt
def test_fp32_graph_with_expect_fp16_is_rejected(exported, tmp_path: Path):
    from deploykit.engine.builder import EnginePrecisionError

    result, config = exported
    engine = tmp_path / "model.engine"
    with pytest.raises(EnginePrecisionError, match="came out FP32") as info:
        build_engine(result.onnx_path, engine, config.batch, 1024, 3, None, expect_fp16=True)
    assert info.value.exit_code == 1 and not engine.exists()


@pytest.mark.gpu
@pytest.mark.trt
def test_timing_cache_reuse_makes_the_second_build_faster(exported, tmp_path: Path):
    result, config = exported
    cache = tmp_path / "timing.cache"
    first = build_engine(result.onnx_path, tmp_path / "a.engine", config.batch, 1024, 3, cache)
    assert not first.timing_cache_loaded and cache.is_file()
    second = build_engine(result.onnx_path, tmp_path / "b.engine", config.batch, 1024, 3, cache)
    assert second.timing_cache_loaded
    # build_seconds times build_serialized_network only: the tactic timing the cache skips
    assert second.build_seconds < first.build_seconds, (first.build_seconds, second.build_seconds)
