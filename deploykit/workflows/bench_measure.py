"""What ``deploykit bench`` measures besides latency: the model's FLOPs, the machine's dense-MatMul ceiling
(ONNX Runtime, same thread count), latency statistics and a description of the machine."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.errors import ArtifactError

if TYPE_CHECKING:
    from torch import nn

#: seed of the random inputs (the benchmark's batches and the MatMul probe's matrices)
INPUT_SEED = 0


def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """FLOPs of one ``(1, *input_size)`` forward of ``model``, as :data:`FLOPS_COUNTED` says."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *input_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def matmul_ceiling(
    threads: int, precision: str = "fp32", size: int = 1024, seconds: float = 0.5
) -> float | None:
    """The dense-MatMul rate (GFLOP/s) ONNX Runtime reaches here: one ``size``^3 MatMul, ``threads`` intra-op
    threads, the same providers the artifacts run with, best of as many runs as fit in ``seconds`` (at
    least 3). ``None`` when this ONNX Runtime has no MatMul for ``precision``. On CUDA the timing includes
    the host/device copies, as every ONNX Runtime timing of :func:`run_bench` does."""
    import numpy as np
    from onnx import TensorProto, helper

    from deploykit.runtime.ort_runner import OrtRunner

    dtype, elem = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}[
        precision
    ]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul_ceiling",
        [helper.make_tensor_value_info(n, elem, [size, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", elem, [size, size])],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = OrtRunner(probe.SerializeToString(), threads=threads, name="matmul").session
    except ArtifactError:
        return None
    rng = np.random.default_rng(INPUT_SEED)
    feeds = {n: rng.standard_normal((size, size)).astype(dtype) for n in ("a", "b")}
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * size**3 / best / 1e9


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """min / p50 / p90 / p99 / mean of ``samples_ms`` (numpy's linear percentiles), in ms."""
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {"min_ms": float(a.min()), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(a.mean())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, precisions: Sequence[str] = ("fp32",)) -> dict[str, Any]:
    """The machine and software the numbers belong to, with the MatMul ceiling for each precision."""
    import numpy
    import onnxruntime
    import torch

    import deploykit
    from deploykit.engine.builder import tensorrt_available
    from deploykit.runtime.ort_runner import default_providers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "onnxruntime_providers": default_providers(),
    }
    for precision in sorted({"fp32", *precisions}):
        info[f"matmul_gflops_{precision}"] = matmul_ceiling(threads, precision)
    info["matmul_probe"] = (
        "fastest run of one 1024x1024x1024 ONNX Runtime MatMul (2*n^3 FLOPs) in 0.5 s probes before and "
        "after the timing, same threads and providers"
    )
    info.update(
        {
            "tensorrt": tensorrt_available()[1],
            "deploykit": deploykit.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    return info
