"""Real TensorRT builds (``gpu`` + ``trt`` markers; skipped with the reason without TensorRT 10.3+ and a
CUDA GPU): the sidecar, the FP16 layer share, parity against PyTorch and timing-cache reuse.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.core.config import BatchProfile, default_config
from deploykit.engine.builder import FP16_SHARE_MIN, build_engine
from deploykit.engine.device import tensorrt_available, tensorrt_version
from deploykit.validation.metrics import Tolerances

_TRT_OK, _TRT_REASON = tensorrt_available()
PRESET, FAMILY = "convit_tiny", "convit"


@pytest.fixture(scope="module")
def engine_export(tmp_path_factory):
    if not _TRT_OK:
        pytest.skip(f"needs TensorRT 10.3+ and a CUDA GPU: {_TRT_REASON}")
    from exporting import export_preset

    config = dataclasses.replace(
        default_config(FAMILY), image_size=64, batch=BatchProfile(min=1, opt=2, max=8)
    )
    out = tmp_path_factory.mktemp("engine")
    result = export_preset(PRESET, out, config=config)
    return result, config


def _reference(config, count: int = 16):
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.torch_runner import TorchRunner
    from deploykit.validation import validation_batch
    from deploykit.workflows.export.model import build_model

    model, _ = build_model(PRESET, config.image_size, seed=config.seed)
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
def test_fp32_engine_builds_with_sidecar_and_matches_torch(engine_export, tmp_path: Path):
    from deploykit.engine.runner import TensorRTRunner

    result, config = engine_export
    engine = tmp_path / "model.engine"
    built = build_engine(
        result.onnx_path,
        engine,
        batch=config.batch,
        workspace_mib=1024,
        opt_level=3,
        timing_cache=tmp_path / "timing.cache",
    )
    sidecar = json.loads((tmp_path / "model.engine.json").read_text())
    assert sidecar["profile"] == {
        "input": "input",
        "min": [1, 3, 64, 64],
        "opt": [2, 3, 64, 64],
        "max": [8, 3, 64, 64],
    }
    assert tensorrt_version(sidecar["tensorrt"]) >= (10, 3) and sidecar["gpu"]["compute_capability"]
    assert sidecar["tf32"] is False
    assert sidecar["precision"] == "fp32" and sidecar["fp16_layer_share"] < FP16_SHARE_MIN
    assert sidecar["source_onnx"]["sha256"] and sidecar["engine"]["bytes"] == engine.stat().st_size
    assert built.sidecar == sidecar and (tmp_path / "timing.cache").stat().st_size > 0

    runner = TensorRTRunner(engine)
    assert runner.variant == "fp32"
    parity = _parity(runner, config, TF32)
    assert parity.passed, parity.worst()


@pytest.mark.gpu
@pytest.mark.trt
def test_fp16_engine_is_fp16_and_matches_torch(engine_export, tmp_path: Path):
    fp16 = pytest.importorskip(
        "deploykit.transforms.fp16", reason="deploykit.transforms.fp16 is not available"
    )
    if not hasattr(fp16, "make_fp16"):
        pytest.skip("deploykit.transforms.fp16.make_fp16 is not available")
    from deploykit.validation import compare_outputs

    result, config = engine_export
    images, reference = _reference(config)

    def passes(logits: np.ndarray) -> bool:
        return compare_outputs({"logits": reference}, {"logits": logits}, config.fp16).passed

    proto, _ = fp16.make_fp16(onnx.load(str(result.onnx_path)), images, reference, passes)
    fp16_onnx = tmp_path / "model_fp16.onnx"
    onnx.save(proto, str(fp16_onnx))
    engine = tmp_path / "model_fp16.engine"
    built = build_engine(fp16_onnx, engine, batch=config.batch, workspace_mib=1024, expect_fp16=True)
    assert built.fp16_share >= FP16_SHARE_MIN
    assert built.sidecar["precision"] == "fp16"

    from deploykit.engine.runner import TensorRTRunner

    runner = TensorRTRunner(engine)
    assert runner.variant == "fp16"
    parity = _parity(runner, config, config.fp16)
    assert parity.passed, parity.worst()


@pytest.mark.gpu
@pytest.mark.trt
def test_fp32_graph_with_expect_fp16_is_rejected(engine_export, tmp_path: Path):
    from deploykit.engine.errors import EnginePrecisionError

    result, config = engine_export
    engine = tmp_path / "model.engine"
    with pytest.raises(EnginePrecisionError, match="came out FP32") as info:
        build_engine(result.onnx_path, engine, batch=config.batch, workspace_mib=1024, expect_fp16=True)
    assert info.value.exit_code == 1 and not engine.exists()


@pytest.mark.gpu
@pytest.mark.trt
def test_timing_cache_reuse_makes_the_second_build_faster(engine_export, tmp_path: Path):
    result, config = engine_export
    cache = tmp_path / "timing.cache"
    first = build_engine(
        result.onnx_path, tmp_path / "a.engine", batch=config.batch, workspace_mib=1024, timing_cache=cache
    )
    assert not first.timing_cache_loaded and cache.is_file()
    second = build_engine(
        result.onnx_path, tmp_path / "b.engine", batch=config.batch, workspace_mib=1024, timing_cache=cache
    )
    assert second.timing_cache_loaded
    # build_seconds times build_serialized_network only: the tactic timing the cache skips
    assert second.build_seconds < first.build_seconds, (first.build_seconds, second.build_seconds)


@pytest.mark.gpu
@pytest.mark.trt
def test_a_real_engine_validates_against_the_golden_reference(engine_export):
    """The device recipe: an engine built from the export's model.onnx, checked torch-free against the
    export's reference.npz (its sidecar records the reference's sha256)."""
    from deploykit.workflows.validate import validate_with_reference

    result, config = engine_export
    built = build_engine(result.onnx_path, result.out_dir / "model.engine", batch=config.batch)
    sidecar = json.loads(built.sidecar_path.read_text())
    assert sidecar["reference_sha256"] == result.manifest["reference"]["sha256"]
    report = validate_with_reference(built.engine_path)
    assert report.passed, report.summary()


@pytest.mark.gpu
@pytest.mark.trt
def test_a_version_compatible_engine_records_it_loads_and_matches_torch(engine_export, tmp_path: Path):
    """Version compatibility on a real GPU: the sidecar records it with this TensorRT and GPU, the runner
    allows the embedded lean runtime and the engine matches PyTorch; hardware compatibility too where the
    GPU is Ampere or newer and not a Jetson (else it is refused in one line)."""
    from deploykit.core.errors import ConfigError
    from deploykit.engine.compat import AMPERE, capability
    from deploykit.engine.device import gpu_info, is_jetson
    from deploykit.engine.runner import TensorRTRunner

    result, config = engine_export
    gpu = gpu_info()[0]
    hardware = capability(gpu["compute_capability"]) >= AMPERE and not is_jetson()
    engine = tmp_path / "model.engine"
    if not hardware:
        with pytest.raises(ConfigError):
            build_engine(result.onnx_path, engine, batch=config.batch, hardware_compatible=True)
    built = build_engine(
        result.onnx_path, engine, batch=config.batch, version_compatible=True, hardware_compatible=hardware
    )
    assert built.sidecar["version_compatible"] is True
    assert built.sidecar["hardware_compatibility"] == ("ampere+" if hardware else "none")
    assert built.sidecar["gpu"]["compute_capability"] == gpu["compute_capability"]
    parity = _parity(TensorRTRunner(engine), config, TF32)
    assert parity.passed, parity.worst()
