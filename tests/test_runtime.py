"""Runners: ONNX Runtime provider selection is read back from the session, not from the wheel."""

import warnings

import numpy as np
import torch

from deploykit.core.onnx_io import serialize
from deploykit.runtime import run_batched
from deploykit.runtime.ort_runner import OrtRunner, default_providers, provider_loads
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms.onnx_export import export_onnx

ASKED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    model(torch.zeros(1, 3, 8, 8))
    return model


def test_ort_runner_reports_the_providers_that_loaded_not_the_ones_asked_for():
    onnx_bytes = serialize(export_onnx(_model(), (3, 8, 8), 17, "torchscript"))
    with warnings.catch_warnings():  # ONNX Runtime warns about asked-for providers this wheel lacks
        warnings.simplefilter("ignore", UserWarning)
        runner = OrtRunner(onnx_bytes, providers=ASKED)
    # each provider's own probe session says whether it runs here; CPU always does
    loaded = [p for p in ASKED if p == "CPUExecutionProvider" or provider_loads(p)]
    # on a CPU-only machine: [CPU], although TensorRT and CUDA were asked for first
    assert runner.providers == loaded and runner.name == f"onnxruntime[{loaded[0]}]"
    # by default only providers that really load are asked for, CPU last (not the wheel's list, which can
    # name providers no session runs on)
    default = OrtRunner(onnx_bytes)
    assert default.providers == default_providers() and default.providers[-1] == "CPUExecutionProvider"


def test_ort_runner_runs_dynamic_batches_like_torch():
    model = _model()
    runner = OrtRunner(serialize(export_onnx(model, (3, 8, 8), 17, "torchscript")))
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8)).astype(np.float32)
    torch_out = run_batched(TorchRunner(model), x, 3)  # chunks of 3, 3, 1 through the dynamic batch
    np.testing.assert_allclose(run_batched(runner, x, 3), torch_out, atol=1e-5)
    assert torch_out.shape == (7, 5)
