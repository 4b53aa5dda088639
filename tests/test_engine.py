"""The TensorRT engine stage (TensorRT 10.3+ and 11.x).

Everywhere: the engine code uses only names that exist in **both** real Python bindings (the committed
identifier lists of tensorrt_cu12_bindings 10.3.0 and tensorrt_cu13_bindings 11.4, checked with ``ast`` —
no TensorRT needed) and none of the APIs TensorRT 11 removed; the version branches of the builder and the
torch-free runner, run against fakes of ``tensorrt`` and ``cuda.bindings.runtime`` that record the calls
(tests/fakes.py); build_engine.sh against stub ``trtexec`` binaries of 10.3 and 11.4; the inspector
parsing; and a one-line EngineUnavailableError (exit code 3) without TensorRT or a GPU.
With TensorRT and a CUDA GPU (``gpu`` + ``trt`` markers, skipped with the reason otherwise): real
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
from fakes import FakeCudart, FakeTensorRT, expected_logits, install_cudart
from onnx import TensorProto, helper

from deploykit.core.config import BatchProfile, default_config
from deploykit.core.errors import EngineUnavailableError
from deploykit.core.io import ordinary_mode
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
from deploykit.validation.metrics import Tolerances

ENGINE_DIR = Path(engine_builder.__file__).parent
IDENTIFIER_LISTS = {
    "10.3": Path(__file__).parent / "data" / "tensorrt10_identifiers.txt",
    "11.4": Path(__file__).parent / "data" / "tensorrt11_identifiers.txt",
}
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
    # every precision flag of BuilderFlag (TF32 stays: deploykit clears it)
    "FP16",
    "INT8",
    "BF16",
    "FP8",
    "INT4",
    "FP4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "set_flag",  # still in 11.x, but deploykit never turns a builder flag on (that is how weak typing starts)
    "device_memory_size",
    "get_device_memory_size_for_profile",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "int8_calibrator",
    "set_quantization_flag",
    "EXPLICIT_BATCH",
    # not here: STRONGLY_TYPED, deprecated and ignored in 11.x but what makes a 10.x network strongly typed
    "max_workspace_size",
    "execute_async_v2",
    "get_binding_shape",
    "binding_is_input",
}


# -------------------------------------------------------------------------------- identifier checks
def _identifiers(version: str) -> set[str]:
    lines = IDENTIFIER_LISTS[version].read_text(encoding="utf-8").splitlines()
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
    text = IDENTIFIER_LISTS["11.4"].read_text(encoding="utf-8")
    assert IDENTIFIER_LISTS["11.4"].stat().st_size < 1_500_000
    assert text.startswith("# ") and "tensorrt_cu13_bindings 11." in text.splitlines()[0]
    ids = _identifiers("11.4")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == sorted(set(body)), "identifier list must be sorted and deduplicated"
    # TensorRT 11 facts the list must reflect: the core API is there, the removed one is not
    assert {"Builder", "OnnxParser", "build_serialized_network", "execute_async_v3", "Runtime"} <= ids
    assert {"device_memory_size_v2", "get_engine_information", "set_timing_cache"} <= ids
    assert not {"FP16", "device_memory_size", "platform_has_fast_fp16", "EXPLICIT_BATCH"} & ids
    assert not {"int8_calibrator", "OBEY_PRECISION_CONSTRAINTS"} & ids


def test_identifier_list_is_from_tensorrt10_bindings():
    text = IDENTIFIER_LISTS["10.3"].read_text(encoding="utf-8")
    assert text.startswith("# ") and "tensorrt_cu12_bindings 10.3.0" in text.splitlines()[0]
    ids = _identifiers("10.3")
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body == sorted(set(body)), "identifier list must be sorted and deduplicated"
    # TensorRT 10.3 facts: weak typing is still there (FP16 flag, EXPLICIT_BATCH) next to the name-based API
    assert {
        "Builder",
        "OnnxParser",
        "execute_async_v3",
        "set_tensor_address",
        "get_engine_information",
    } <= ids
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS", "EXPLICIT_BATCH", "STRONGLY_TYPED", "TF32"} <= ids
    assert ids != _identifiers("11.4")


@pytest.mark.parametrize("version", sorted(IDENTIFIER_LISTS))
@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_attribute_chains_exist_in_both_bindings(path: Path, version: str):
    ids = _identifiers(version)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = {".".join(c) for c in _trt_chains(tree) if not set(c) <= ids}
    assert not missing, f"{path.name}: not in the TensorRT {version} bindings: {sorted(missing)}"


@pytest.mark.parametrize("version", sorted(IDENTIFIER_LISTS))
@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_trt_api_used_is_complete_and_exists(path: Path, version: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    chains = _trt_chains(tree)
    members = _trt_object_members(tree)
    declared = _declared(tree)
    if declared is None:
        assert not chains and not members, f"{path.name} uses TensorRT but declares no TRT_API_USED"
        return
    assert len(declared) == len(set(declared)), f"{path.name}: duplicates in TRT_API_USED"
    unknown = sorted(set(declared) - _identifiers(version))
    assert not unknown, f"{path.name}: TRT_API_USED names not in the TensorRT {version} bindings: {unknown}"
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
    code = [line for line in text.splitlines() if not line.startswith("#")]
    # weak typing is never asked for; --workspace is gone since 10.x
    for removed in ("--fp16", "--int8", "--bf16", "--best", "--workspace"):
        assert not any(removed in line for line in code)


def test_build_script_is_executable_and_valid_bash(tmp_path: Path):
    path = _script(tmp_path, reason="no CUDA GPU\nsecond line; $(rm -rf /)")
    assert stat.S_IMODE(path.stat().st_mode) == ordinary_mode(executable=True)
    subprocess.run(["bash", "-n", str(path)], check=True)
    comment = [line for line in path.read_text().splitlines() if "no CUDA GPU" in line]
    assert len(comment) == 1 and comment[0].startswith("#")  # a multi-line reason stays one comment line
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def _stub_trtexec(bin_dir: Path, banner_version: str | None, no_tf32: bool = True) -> Path:
    """A ``trtexec`` that answers ``--help`` like the real one (banner line first, then the flags) and
    otherwise prints its working directory and arguments."""
    bin_dir.mkdir(exist_ok=True)
    banner = (
        f"&&&& RUNNING TensorRT.trtexec [TensorRT v{banner_version}] # trtexec --help"
        if banner_version
        else "usage"
    )
    help_text = "  --noTF32                    Disable tf32 precision" if no_tf32 else "  --verbose"
    fake = bin_dir / "trtexec"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = --help ]; then echo "{banner}"; echo "{help_text}"; exit 1; fi\n'
        'pwd\nprintf "%s\\n" "$@"\n'
    )
    fake.chmod(0o755)
    return fake


def _run_script(path: Path, bin_dir: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env_extra)
    return subprocess.run(["bash", str(path), *args], cwd="/", env=env, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("banner", "version_flags"),
    [
        ("100300", ["--stronglyTyped", "--noTF32"]),  # TensorRT 10.3.0 (JetPack 6): strong typing asked for
        ("101601", ["--stronglyTyped", "--noTF32"]),
        ("110400", ["--noTF32"]),  # TensorRT 11.4: always strongly typed, the flag is not needed
    ],
)
def test_build_script_branches_on_the_trtexec_version(tmp_path: Path, banner: str, version_flags: list[str]):
    path = _script(tmp_path)
    bin_dir = tmp_path / "bin"
    _stub_trtexec(bin_dir, banner)
    run = _run_script(path, bin_dir, "--verbose")
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert Path(out[0]).resolve() == tmp_path.resolve()  # runs from its own directory
    assert out[1:] == [*EXPECTED_ARGS, *version_flags, "--verbose"]
    major, minor = int(banner) // 10000, int(banner) // 100 % 100
    assert f"TensorRT {major}.{minor}" in run.stderr


def test_build_script_passes_no_tf32_only_where_trtexec_has_it(tmp_path: Path):
    path = _script(tmp_path)
    _stub_trtexec(tmp_path / "bin", "100300", no_tf32=False)
    run = _run_script(path, tmp_path / "bin")
    assert run.returncode == 0 and run.stdout.splitlines()[1:] == [*EXPECTED_ARGS, "--stronglyTyped"]


@pytest.mark.parametrize(
    ("banner", "message"), [("8601", "TensorRT 8.6"), ("100200", "TensorRT 10.2"), (None, "cannot read")]
)
def test_build_script_refuses_old_or_unknown_trtexec(tmp_path: Path, banner, message: str):
    path = _script(tmp_path)
    _stub_trtexec(tmp_path / "bin", banner)
    run = _run_script(path, tmp_path / "bin")
    assert run.returncode == 2 and message in run.stderr and not run.stdout


def test_build_script_takes_trtexec_from_the_environment(tmp_path: Path):
    path = _script(tmp_path)
    fake = _stub_trtexec(tmp_path / "elsewhere", "110400")
    run = _run_script(path, tmp_path / "empty", TRTEXEC=str(fake))
    assert run.returncode == 0 and run.stdout.splitlines()[1] == EXPECTED_ARGS[0]
    missing = _run_script(path, tmp_path / "empty", TRTEXEC=str(tmp_path / "nope"))
    assert missing.returncode == 127 and "trtexec not found" in missing.stderr


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


# ------------------------------------------------------------------- fakes: TensorRT 10.3 / 11.4 paths
def _with_fakes(monkeypatch, version: str, devices: int = 1, **engine) -> tuple[FakeTensorRT, FakeCudart]:
    trt, cudart = FakeTensorRT(version, **engine), FakeCudart(devices)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cudart(monkeypatch, cudart)
    return trt, cudart


def _exported_like_onnx(path: Path) -> Path:
    """A small ONNX file with deploykit's preprocessing record, as an export writes it."""
    proto = onnx.load(str(_tiny_onnx(path)))
    record = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    onnx.helper.set_model_props(proto, {"deploykit.preprocessing": json.dumps(record)})
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    ("version", "flags", "strongly_typed"),
    [
        ("10.3.0.26", 1 << 1, "creation flag STRONGLY_TYPED"),  # JetPack 6: weak typing unless asked
        ("10.16.1.11", 1 << 1, "creation flag STRONGLY_TYPED"),
        ("11.4.0.106", 0, "always (TensorRT 11)"),  # the flag is deprecated and ignored: not passed
    ],
)
def test_build_engine_version_branches(tmp_path: Path, monkeypatch, version, flags, strongly_typed):
    trt, _ = _with_fakes(monkeypatch, version, layer_dtypes=["Float"] * 3)
    onnx_path = _exported_like_onnx(tmp_path / "model.onnx")
    result = build_engine(
        onnx_path, tmp_path / "model.engine", BatchProfile(1, 2, 8), 512, 4, tmp_path / "t.cache"
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
    assert sidecar["preprocessing"]["interpolation"] == "bilinear"  # predict can run the engine alone
    assert result.engine_path.read_bytes() == f"ENGINE trt={version} flags={flags}".encode()
    assert (tmp_path / "t.cache").read_bytes().startswith(b"CACHE")
    assert stat.S_IMODE(result.engine_path.stat().st_mode) == ordinary_mode()


def test_build_engine_fp16_share_gate_with_fakes(tmp_path: Path, monkeypatch):
    from deploykit.engine.builder import EnginePrecisionError

    _with_fakes(monkeypatch, "10.3.0.26", layer_dtypes=["Half"] * 9 + ["Float"])
    onnx_path = _exported_like_onnx(tmp_path / "model.onnx")
    built = build_engine(onnx_path, tmp_path / "a.engine", BatchProfile(1, 1, 4), expect_fp16=True)
    assert built.sidecar["precision"] == "fp16" and built.fp16_share == pytest.approx(0.9)
    _with_fakes(monkeypatch, "10.3.0.26", layer_dtypes=["Half"] * 8 + ["Float"] * 2)
    with pytest.raises(EnginePrecisionError, match="came out FP32"):
        build_engine(onnx_path, tmp_path / "b.engine", BatchProfile(1, 1, 4), expect_fp16=True)
    assert not (tmp_path / "b.engine").exists()


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
    _with_fakes(monkeypatch, version, devices=devices)
    got_ok, reason = tensorrt_available()
    assert got_ok is ok and message in reason and "\n" not in reason


def _fake_engine(tmp_path: Path, version: str = "10.3.0.26", precision: str = "fp32") -> Path:
    engine = tmp_path / "model.engine"
    engine.write_bytes(f"ENGINE trt={version}".encode())
    (tmp_path / "model.engine.json").write_text(json.dumps({"precision": precision}))
    return engine


@pytest.mark.parametrize("version", ["10.3.0.26", "11.4.0.106"])
def test_runner_numpy_path_through_cuda_python(tmp_path: Path, monkeypatch, version):
    from deploykit.engine.runner import TensorRTRunner

    trt, cudart = _with_fakes(monkeypatch, version)
    runner = TensorRTRunner(_fake_engine(tmp_path, version))
    assert runner.name == f"tensorrt[{version}]" and runner.batch_range == (1, 8)
    assert runner.input_shape == (3, 4, 4) and runner.precision == "fp32"
    rng = np.random.default_rng(0)
    for batch in (2, 5, 3):  # the buffers grow once to 5 and are reused for 3
        x = rng.standard_normal((batch, 3, 4, 4)).astype(np.float32)
        out = runner.run(x)
        assert out.dtype == np.float32 and out.shape == (batch, 5)
        np.testing.assert_allclose(out, expected_logits(x), rtol=1e-6, atol=1e-6)
    mallocs = [c for c in cudart.calls if c[0] == "cudaMalloc"]
    assert mallocs == [
        ("cudaMalloc", 2 * 48 * 4),
        ("cudaMalloc", 2 * 5 * 4),
        ("cudaMalloc", 5 * 48 * 4),
        ("cudaMalloc", 5 * 5 * 4),
    ]
    copies = [c[1] for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert copies == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] * 3
    assert all(c[-1] == 1001 for c in cudart.calls if c[0] in ("cudaMemcpyAsync", "cudaStreamSynchronize"))
    assert ("execute_async_v3", 1001) in trt.calls
    runner.close()
    assert not cudart.buffers and ("cudaStreamDestroy", 1001) in cudart.calls


def test_runner_half_io_and_profile_errors(tmp_path: Path, monkeypatch):
    from deploykit.core.errors import InputError
    from deploykit.engine.runner import TensorRTRunner

    _with_fakes(monkeypatch, "11.4.0.106", io_dtype="HALF", batch_range=(1, 4))
    runner = TensorRTRunner(_fake_engine(tmp_path, precision="fp16"))
    x = np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(np.float32)
    out = runner.run(x)  # float32 in, converted to the engine's FP16 input, FP16 out -> float32
    assert out.dtype == np.float32 and runner.precision == "fp16"
    np.testing.assert_allclose(out, expected_logits(x.astype(np.float16)), rtol=2e-3, atol=2e-3)
    with pytest.raises(InputError, match="batch 1..4"):
        runner.run(np.zeros((5, 3, 4, 4), np.float32))
    with pytest.raises(InputError, match="does not fit"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))


def test_runner_rejects_an_engine_tensorrt_cannot_load(tmp_path: Path, monkeypatch):
    from deploykit.core.errors import ArtifactError
    from deploykit.engine.runner import TensorRTRunner

    _with_fakes(monkeypatch, "10.3.0.26")
    engine = tmp_path / "other.engine"
    engine.write_bytes(b"serialized by another TensorRT")
    with pytest.raises(ArtifactError, match="cannot load this engine"):
        TensorRTRunner(engine)


def test_runner_needs_cuda_python_not_torch(tmp_path: Path, monkeypatch):
    from deploykit.engine.runner import TensorRTRunner

    _with_fakes(monkeypatch, "10.3.0.26")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(engine_builder, "gpu_info", lambda: ({"name": "Fake"}, ""))
    with pytest.raises(EngineUnavailableError, match="cuda-python") as info:
        TensorRTRunner(_fake_engine(tmp_path))
    assert info.value.exit_code == 3


def test_engine_runtime_imports_no_torch():
    code = (
        "import sys, deploykit.engine.runner, deploykit.runtime; "
        "from deploykit import load; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ TensorRT + CUDA GPU
_TRT_OK, _TRT_REASON = tensorrt_available()
PRESET, FAMILY = "convit_tiny", "convit"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not _TRT_OK:
        pytest.skip(f"needs TensorRT 10.3+ and a CUDA GPU: {_TRT_REASON}")
    from deploykit.workflows.pipeline import run_export

    config = dataclasses.replace(default_config(FAMILY), image_size=64, batch=BatchProfile(1, 2, 8))
    out = tmp_path_factory.mktemp("engine")
    result = run_export(PRESET, out, config=config)
    return result, config


def _reference(config, count: int = 16):
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.torch_runner import TorchRunner
    from deploykit.validation import validation_batch
    from deploykit.workflows.pipeline import build_model

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
    assert (
        engine_builder.tensorrt_version(sidecar["tensorrt"]) >= (10, 3)
        and sidecar["gpu"]["compute_capability"]
    )
    assert sidecar["tf32"] is False
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
    fp16 = pytest.importorskip("deploykit.transforms.fp16", reason="deploykit.transforms.fp16 is not available")
    if not hasattr(fp16, "make_fp16"):
        pytest.skip("deploykit.transforms.fp16.make_fp16 is not available")
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
