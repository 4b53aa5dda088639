"""What ``deploykit bench`` measures: the interleaved timing of its cases and their results (host end to
end for every case; the GPU compute alone, by CUDA events, where the runner can say it), the machine's
dense-MatMul ceiling (ONNX Runtime, same thread count), latency statistics and a description of the
machine (on a Jetson its power mode and clocks, with a warning when the clocks are not locked). Neither
PyTorch nor ONNX Runtime is needed to import this module or to time a TensorRT engine."""

from __future__ import annotations

import datetime
import gc
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.artifacts import Precision, Variant
from deploykit.core.errors import ArtifactError, DeployKitWarning, first_line
from deploykit.core.parts import have
from deploykit.workflows.bench.report import CaseResult, Runtime

if TYPE_CHECKING:
    import numpy as np

    from deploykit.runtime.base import Runner

#: seed of the random inputs (the benchmark's batches and the MatMul probe's matrices)
INPUT_SEED = 0
#: the runtimes, in the order the results list them
RUNTIMES = tuple(Runtime)
#: the precisions (variants of the export's graphs, see deploykit.core.artifacts), in the order the results
#: list them within a runtime: int8 is model.int8.onnx (Q/DQ, the TensorRT graph), int8-cpu is
#: model.int8.cpu.onnx (ONNX Runtime's dynamic quantization)
PRECISION_ORDER = tuple(Variant)
#: element types of the MatMul ceiling probe: precision -> (numpy dtype names of A, B, ONNX op)
_PROBES = {
    Precision.FP32: ("float32", "float32", "MatMul"),
    Precision.FP16: ("float16", "float16", "MatMul"),
    # what dynamic quantization runs: uint8 x int8 -> int32
    Precision.INT8: ("uint8", "int8", "MatMulInteger"),
}


def ceiling_precision(precision: str) -> str:
    """The MatMul probe a precision is compared with: both INT8 variants with the integer MatMul."""
    return Precision.INT8 if precision.startswith("int8") else precision


@dataclass(kw_only=True)
class Case:
    """One runtime x precision x batch: its runner, fixed input and timed samples."""

    runtime: Runtime
    precision: Variant
    batch: int
    runner: Runner
    x: np.ndarray
    #: host end to end per timed run: the call, with any copies in and out and the synchronisation
    samples_ms: list[float] = field(default_factory=list)
    #: the GPU compute alone per timed run (CUDA events around the engine's execution), where measured
    gpu_samples_ms: list[float] = field(default_factory=list)
    #: the file it runs (None: the eager model)
    artifact: str | None = None

    def run_timed(self) -> float | None:
        """One run of the case; the GPU milliseconds when its runner measures them (``run_timed``: the
        TensorRT runner), else None."""
        timed = getattr(self.runner, "run_timed", None)
        if timed is None:
            self.runner.run(self.x)
            return None
        return timed(self.x)[1]


def make_cases(runners, batches, input_size, skipped: list[dict[str, Any]]) -> list[Case]:
    """One case per runner ``(runtime, precision, runner, batch range or None, artifact)`` and batch size,
    each with its fixed, contiguous input in the runner's dtype; a batch outside an engine's profile goes to
    ``skipped``."""
    import numpy as np

    rng = np.random.default_rng(INPUT_SEED)
    full = rng.standard_normal((max(batches), *input_size), dtype=np.float32)
    cases = []
    for runtime, precision, runner, batch_range, artifact in runners:
        dtype = getattr(runner, "input_dtype", np.float32)
        for batch in batches:
            if batch_range is not None and not batch_range[0] <= batch <= batch_range[1]:
                reason = f"batch {batch} is outside the engine's profile {batch_range[0]}..{batch_range[1]}"
                skipped.append({"runtime": runtime, "precision": precision, "reason": reason})
                continue
            x = np.ascontiguousarray(full[:batch], dtype=dtype)
            cases.append(
                Case(runtime=runtime, precision=precision, batch=batch, runner=runner, x=x, artifact=artifact)
            )
    return cases


class BenchProgress:
    """What ``bench`` tells while it runs: a line per step (:meth:`say`) and the timing rounds
    (:meth:`start`, :meth:`advance` per timed run, :meth:`stop`). This one says nothing (the Python API);
    the command line shows them on stderr."""

    def say(self, message: str) -> None:
        pass

    def start(self, total: int) -> None:
        pass

    def advance(self, phase: str) -> None:
        pass

    def stop(self) -> None:
        pass


def time_cases(
    cases: list[Case], *, warmup: int, iters: int, settle_s: float, progress: BenchProgress
) -> None:
    """Interleaved timing: each round runs every case in a seeded random order; a case runs untimed until
    ``settle_s`` have passed (at least once), then once timed. The first ``warmup`` rounds record nothing.
    The garbage collector is paused during a round (as ``timeit`` does) and runs between rounds."""
    import numpy as np

    for case in cases:  # one call each up front: a runner that cannot run its batch fails here, by name
        try:
            case.runner.run(case.x)
        except Exception as exc:
            first = first_line(exc)
            raise ArtifactError(
                f"{case.runtime} {case.precision} batch {case.batch} failed: {first}"
            ) from None
    rng = np.random.default_rng(INPUT_SEED)
    gc_was_enabled = gc.isenabled()
    clock = time.perf_counter
    progress.start((warmup + iters) * len(cases))
    try:
        for round_ in range(warmup + iters):
            phase = "warm-up" if round_ < warmup else "timing"
            gc.disable()
            for i in rng.permutation(len(cases)):
                case = cases[i]
                settled = clock() + settle_s
                case.runner.run(case.x)
                while clock() < settled:
                    case.runner.run(case.x)
                start = clock()
                gpu_ms = case.run_timed()
                elapsed_ms = (clock() - start) * 1e3
                if round_ >= warmup:
                    case.samples_ms.append(elapsed_ms)
                    if gpu_ms is not None:
                        case.gpu_samples_ms.append(gpu_ms)
                progress.advance(phase)
            if gc_was_enabled:
                gc.enable()
                gc.collect()
    finally:
        progress.stop()
        if gc_was_enabled:
            gc.enable()


def case_results(
    cases: list[Case], gflop_per_image: float | None, machine: dict[str, Any]
) -> list[CaseResult]:
    """The statistics of every case, with its p50 relative to eager PyTorch (``ratio_to_torch``) and to
    ONNX Runtime's FP32 artifact (``ratio_to_fp32``) at the same batch; sorted by batch, runtime and
    :data:`PRECISION_ORDER`. ``gflop_per_image`` None (not counted): no GFLOP/s."""
    stats = [latency_stats(case.samples_ms) for case in cases]
    base: dict[tuple[str, int], float] = {}
    for case, s in zip(cases, stats):
        if case.runtime in (Runtime.TORCH, Runtime.ONNXRUNTIME) and case.precision is Variant.FP32:
            base[case.runtime, case.batch] = s["p50_ms"]
    results = []
    for case, s in zip(cases, stats):
        seconds = s["p50_ms"] / 1e3
        gflops = None if gflop_per_image is None else gflop_per_image * case.batch / seconds
        ceiling = machine.get(f"matmul_gflops_{ceiling_precision(case.precision)}") or machine.get(
            "matmul_gflops_fp32"
        )
        to_torch, to_fp32 = base.get((Runtime.TORCH, case.batch)), base.get((Runtime.ONNXRUNTIME, case.batch))
        providers = getattr(case.runner, "providers", None)
        results.append(
            CaseResult(
                runtime=case.runtime,
                precision=case.precision,
                batch=case.batch,
                runner=case.runner.name,
                provider=providers[0] if providers else None,
                samples_ms=tuple(case.samples_ms),
                **s,
                gpu_ms=latency_stats(case.gpu_samples_ms) if case.gpu_samples_ms else None,
                images_per_s=case.batch / seconds,
                gflops=gflops,
                ratio_to_torch=s["p50_ms"] / to_torch if to_torch else None,
                pct_of_matmul_ceiling=100 * gflops / ceiling if ceiling and gflops is not None else None,
                ratio_to_fp32=s["p50_ms"] / to_fp32 if to_fp32 and case.runtime != Runtime.TORCH else None,
                artifact=case.artifact,
            )
        )
    runtimes = {r: i for i, r in enumerate(RUNTIMES)}
    precisions = {p: i for i, p in enumerate(PRECISION_ORDER)}
    return sorted(
        results,
        key=lambda r: (r.batch, runtimes.get(r.runtime, len(runtimes)), precisions.get(r.precision, 99)),
    )


def matmul_ceiling(
    threads: int, precision: str = Precision.FP32, size: int = 1024, seconds: float = 0.5
) -> float | None:
    """The dense-MatMul rate (GFLOP/s) ONNX Runtime reaches here: one ``size``^3 MatMul, ``threads`` intra-op
    threads, the same providers the artifacts run with, best of as many runs as fit in ``seconds`` (at
    least 3). ``int8`` (or ``int8-cpu``) probes ``MatMulInteger`` (uint8 x int8 -> int32, what dynamic
    quantization runs; GOP/s). ``None`` when this ONNX Runtime has no MatMul for ``precision``, the
    precision is unknown or ONNX Runtime is not installed (a TensorRT-only device). On CUDA the timing
    includes the host/device copies, as every ONNX Runtime timing of :func:`run_bench` does."""
    import numpy as np
    from onnx import helper

    from deploykit.runtime.ort_runner import OrtRunner

    if ceiling_precision(precision) not in _PROBES or not have("onnxruntime"):
        return None
    a_type, b_type, op = _PROBES[ceiling_precision(precision)]
    c_type = "int32" if op == "MatMulInteger" else a_type
    elem = helper.np_dtype_to_tensor_dtype
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["c"])],
        "matmul_ceiling",
        [
            helper.make_tensor_value_info(n, elem(np.dtype(t)), [size, size])
            for n, t in (("a", a_type), ("b", b_type))
        ],
        [helper.make_tensor_value_info("c", elem(np.dtype(c_type)), [size, size])],
    )
    # IR 8 (what opset 17 needs), not this onnx's newest: a device's ONNX Runtime may read only older IR
    # versions (onnxruntime 1.23, the last for Python 3.10, reads up to 11; onnx 1.23 writes 14)
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = OrtRunner(probe.SerializeToString(), threads=threads, name="matmul").session
    except ArtifactError:
        return None
    rng = np.random.default_rng(INPUT_SEED)
    if op == "MatMulInteger":
        feeds = {
            "a": rng.integers(0, 256, (size, size), dtype=np.uint8),
            "b": rng.integers(-128, 128, (size, size), dtype=np.int8),
        }
    else:
        feeds = {n: rng.standard_normal((size, size)).astype(a_type) for n in ("a", "b")}
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


def machine_info(
    threads: int, precisions: Sequence[str] = (Precision.FP32,), *, gpu: bool = False
) -> dict[str, Any]:
    """The machine and software the numbers belong to, with the MatMul ceiling for each precision (none
    without ONNX Runtime), the GPU (``gpu``: engines are timed) and, on a Jetson, its power mode and
    clocks (:func:`jetson_record`). torch and ONNX Runtime are named by their installed versions (None:
    not installed); neither is imported for it."""
    import numpy

    import deploykit
    from deploykit.engine.device import gpu_info, tensorrt_available
    from deploykit.runtime.ort_runner import default_providers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        # asked for: CUDA first where a session really runs on it (each row names what ran)
        "onnxruntime_providers": default_providers() if have("onnxruntime") else [],
    }
    for precision in sorted({Precision.FP32, *(ceiling_precision(p) for p in precisions)}):
        info[f"matmul_gflops_{precision}"] = matmul_ceiling(threads, precision)
    info["matmul_probe"] = (
        "fastest run of one 1024x1024x1024 ONNX Runtime MatMul (2*n^3 FLOPs; int8: MatMulInteger, uint8 x "
        "int8 -> int32) in 0.5 s probes before and after the timing, same threads and providers"
    )
    info.update(
        {
            "tensorrt": tensorrt_available()[1],
            "deploykit": deploykit.__version__,
            "torch": installed_version("torch"),
            "onnxruntime": installed_version("onnxruntime", "onnxruntime-gpu"),
            "numpy": numpy.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if gpu:
        info["gpu"] = gpu_info()[0]
    info.update(jetson_record())
    return info


def installed_version(module: str, *distributions: str) -> str | None:
    """The version of ``module``: its ``__version__`` when it is imported already, else the installed
    distribution's (``distributions``, default the module's name); None when it is not installed."""
    from importlib import metadata

    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for name in distributions or (module,):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def jetson_record() -> dict[str, Any]:
    """``{"jetson": {model, l4t, jetpack, power_mode, clocks_locked, ...}}`` on a Jetson (empty elsewhere),
    from :func:`deploykit.engine.device.jetson_facts`. Clocks that are not locked move with DVFS, and so do
    the latencies: a :class:`DeployKitWarning` says so (the command line shows it as one ``warning:``)."""
    from deploykit.engine.device import jetson_facts

    try:
        facts = jetson_facts()
    except Exception as exc:  # a fact that cannot be read must not cost the benchmark
        warnings.warn(
            f"cannot read the Jetson's power mode and clocks: {first_line(exc)}",
            DeployKitWarning,
            stacklevel=2,
        )
        return {}
    if facts is None:
        return {}
    mode = f"power mode {facts.power_mode}" if facts.power_mode is not None else "power mode unknown"
    if facts.clocks_locked is False:
        warnings.warn(
            f"the Jetson's clocks are not locked, so the latencies move with the clock governor ({mode}; "
            f"{facts.clocks})",
            DeployKitWarning,
            stacklevel=2,
        )
    elif facts.clocks_locked is None:
        warnings.warn(
            f"cannot tell whether the Jetson's clocks are locked ({mode}; {facts.clocks})",
            DeployKitWarning,
            stacklevel=2,
        )
    return {"jetson": facts.to_dict()}
