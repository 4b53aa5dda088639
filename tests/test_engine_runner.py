"""The torch-free TensorRT runner, against fakes of ``tensorrt`` and ``cuda.bindings.runtime``
(tests/fakes.py) on TensorRT 10.3 and 11.4: numpy batches through device buffers and copies, FP16 I/O,
profile errors, engines it cannot load, and exit code 3 without TensorRT or cuda-python.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import expected_logits, fake_engine_file, install_fakes

from deploykit.core.errors import ArtifactError, EngineUnavailableError, InputError
from deploykit.engine import device as engine_device
from deploykit.engine.runner import TensorRTRunner


def test_runner_without_tensorrt_raises_exit_code_3(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(EngineUnavailableError) as info:
        TensorRTRunner(engine)
    assert info.value.exit_code == 3 and "TensorRT is not importable" in str(info.value)


@pytest.mark.parametrize("version", ["10.3.0.26", "11.4.0.106"])
def test_runner_numpy_path_through_cuda_python(tmp_path: Path, monkeypatch, version):
    trt, cudart = install_fakes(monkeypatch, version)
    runner = TensorRTRunner(fake_engine_file(tmp_path, version))
    assert runner.name == f"tensorrt[{version}]" and runner.batch_range == (1, 8)
    assert runner.input_shape == (3, 4, 4) and runner.variant == "fp32"
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
    install_fakes(monkeypatch, "11.4.0.106", io_dtype="HALF", batch_range=(1, 4))
    runner = TensorRTRunner(fake_engine_file(tmp_path, precision="fp16"))
    x = np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(np.float32)
    out = runner.run(x)  # float32 in, converted to the engine's FP16 input, FP16 out -> float32
    assert out.dtype == np.float32 and runner.variant == "fp16"
    np.testing.assert_allclose(out, expected_logits(x.astype(np.float16)), rtol=2e-3, atol=2e-3)
    with pytest.raises(InputError, match="batch 1..4"):
        runner.run(np.zeros((5, 3, 4, 4), np.float32))
    with pytest.raises(InputError, match="does not fit"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))


def test_runner_rejects_an_engine_tensorrt_cannot_load(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "10.3.0.26")
    engine = tmp_path / "other.engine"
    engine.write_bytes(b"serialized by another TensorRT")
    with pytest.raises(ArtifactError, match="cannot load this engine"):
        TensorRTRunner(engine)


def test_runner_needs_cuda_python_not_torch(tmp_path: Path, monkeypatch):
    install_fakes(monkeypatch, "10.3.0.26")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(engine_device, "gpu_info", lambda: ({"name": "Fake"}, ""))
    with pytest.raises(EngineUnavailableError, match="cuda-python") as info:
        TensorRTRunner(fake_engine_file(tmp_path))
    assert info.value.exit_code == 3


def test_runner_reports_an_int8_engine(tmp_path: Path, monkeypatch):
    # the sidecar of an engine built from a Q/DQ graph says int8; anything unknown stays fp32
    install_fakes(monkeypatch, "10.3.0.26")
    assert TensorRTRunner(fake_engine_file(tmp_path, precision="int8")).variant == "int8"
    assert TensorRTRunner(fake_engine_file(tmp_path, precision="int4")).variant == "fp32"
