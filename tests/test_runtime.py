"""Runners: ONNX Runtime provider selection is read back from the session, not from the wheel."""

import numpy as np
import torch

from deploykit.core.onnx_io import serialize
from deploykit.runtime import run_batched
from deploykit.runtime.ort_runner import OrtRunner, cuda_provider_loads
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms.onnx_export import export_onnx


def test_ort_runner_reports_the_provider_in_use():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    model(torch.zeros(1, 3, 8, 8))
    runner = OrtRunner(serialize(export_onnx(model, (3, 8, 8), 17, "torchscript")))
    assert runner.providers == runner.session.get_providers()
    assert (runner.providers[0] == "CUDAExecutionProvider") == cuda_provider_loads()
    x = np.random.default_rng(0).standard_normal((7, 3, 8, 8)).astype(np.float32)
    torch_out = run_batched(TorchRunner(model), x, 3)  # chunks of 3, 3, 1 through the dynamic batch
    np.testing.assert_allclose(run_batched(runner, x, 3), torch_out, atol=1e-5)
    assert torch_out.shape == (7, 5)
