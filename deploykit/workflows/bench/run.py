"""``deploykit bench``: latency and throughput of every runtime of one export, measured in one process.

The cases are PyTorch eager (the preset rebuilt from ``manifest.json``, with the export's weights), the ONNX
files (ONNX Runtime; CUDA where a session really runs on it): FP32, FP16, the INT8 Q/DQ graph TensorRT builds
from (``model.int8.onnx``, run by ONNX Runtime) and the INT8 CPU artifact (``model.int8.cpu.onnx``, dynamic
quantization) where the export has them, and the TensorRT engines (where TensorRT and a GPU are present;
otherwise the reason is recorded, nothing is faked), each at every batch size. Every round runs each case once, in a fresh (seeded) random order, so drift of the machine (clock,
thermals, other processes) spreads over all cases alike instead of landing on one of them. Runtimes that
share one process disturb each other, though: ONNX Runtime's intra-op workers keep spinning for tens of
milliseconds after a run and slow down whatever runs next (measured in docs/measured.md). So each case
first settles: it runs untimed until ``settle_ms`` (50 ms) have passed, then its one timed run follows;
each timed sample is thus taken in the state a back-to-back loop of that runtime alone would be in.

Per case: min/p50/p90/p99/mean latency in ms (host end to end), the GPU compute alone where the runner
measures it (TensorRT: CUDA events around the engine's execution), images/s at the p50, the p50 relative to
eager and to ONNX Runtime's FP32 artifact at the same batch, and the achieved GFLOP/s: the model's FLOPs
(counted once on the export's ONNX graph, :mod:`.flops`) over the p50, beside the machine's dense-MatMul
ceiling measured by ONNX Runtime with the same thread count (:func:`matmul_ceiling`).

Without PyTorch (a device install) an export directory is benchmarked on ONNX Runtime and TensorRT: the
input size comes from its ``manifest.json``, the FLOPs from its graph, and eager PyTorch is skipped with the
reason (so is ONNX Runtime where it is not installed); a preset name needs PyTorch, to export it first.
Heavy imports (torch, onnxruntime, matplotlib) happen inside the functions, so importing this module is
cheap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.artifacts import Precision, Variant
from deploykit.core.config import MAX_BATCH
from deploykit.core.errors import ArtifactError, ConfigError, UnknownModelError
from deploykit.core.parts import have, missing, require
from deploykit.core.record import artifact_record, manifest_path, read_export_manifest
from deploykit.workflows.bench.flops import graph_flops
from deploykit.workflows.bench.measure import (
    INPUT_SEED,
    RUNTIMES,
    BenchProgress,
    Runtime,
    case_results,
    ceiling_precision,
    machine_info,
    make_cases,
    matmul_ceiling,
    time_cases,
)
from deploykit.workflows.bench.report import TIMING, BenchReport

if TYPE_CHECKING:
    from torch import nn

    from deploykit.runtime.base import Runner

#: ONNX files of an export directory and the precision (variant) of each: fp32, fp16, int8 (the Q/DQ graph
#: for TensorRT, run here by ONNX Runtime), int8-cpu (ONNX Runtime's dynamic quantization)
ONNX_FILES = {variant: variant.file for variant in Variant}
#: why an optional ONNX file may be missing
_MISSING = {
    Variant.FP16: "export with --fp16",
    Variant.INT8: "export with --int8",
    Variant.INT8_CPU: "export with --int8",
}


# ------------------------------------------------------------------------------------------------ parsing
def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,8"`` (or a sequence of ints) -> ``(1, 8)``; positive, distinct, in the order given."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        values = tuple(int(p) for p in parts)
        ok = bool(values) and all(1 <= v <= MAX_BATCH for v in values) and len(set(values)) == len(values)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"--batch takes distinct integers in [1, {MAX_BATCH}] separated by commas (e.g. 1,8), got {text!r}"
        )
    return values


def parse_runtimes(text: str | Sequence[str]) -> tuple[Runtime, ...]:
    """``"torch,onnxruntime"`` (or a sequence) -> the runtimes, each one of :data:`RUNTIMES`."""
    values = tuple(p.strip() for p in text.split(",")) if isinstance(text, str) else tuple(text)
    unknown = [v for v in values if v not in RUNTIMES]
    if not values or unknown or len(set(values)) != len(values):
        raise ConfigError(
            f"--runtime takes distinct names from {', '.join(RUNTIMES)} separated by commas, got {text!r}"
        )
    return tuple(Runtime(v) for v in values)


# ------------------------------------------------------------------------------------------------ target
@contextmanager
def _export_dir(
    target: str | Path, runtimes: Sequence[Runtime], say: Callable[[str], None]
) -> Iterator[tuple[Path, bool]]:
    """The export directory of ``target``: the directory itself, the directory of an ``.onnx`` / engine
    file in it, or (a preset name) a fresh FP32 + FP16 export in a temporary directory, removed afterwards.
    Yields ``(directory, is_temporary)``."""
    from deploykit.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES

    path = Path(target)
    if path.is_dir():
        yield path, False
        return
    if path.is_file():
        if path.suffix not in ONNX_SUFFIXES + ENGINE_SUFFIXES:
            raise ArtifactError(
                f"{path}: expected an export directory, an .onnx file or an engine "
                f"({', '.join(ENGINE_SUFFIXES)}) inside one, or a preset name"
            )
        yield path.parent, False
        return
    if path.suffix in ONNX_SUFFIXES + ENGINE_SUFFIXES or len(path.parts) > 1:
        raise ArtifactError(f"artifact not found: {path}")
    require("torch", f"bench {target} (no export directory of that name: a preset, exported first)")
    from deploykit.models import get_preset

    try:
        preset = get_preset(str(target))
    except UnknownModelError as exc:
        raise UnknownModelError(
            f"{str(target)!r} is neither an export directory nor a preset: {exc}"
        ) from None
    from deploykit.engine.device import tensorrt_available
    from deploykit.workflows.export import ExportRequest, run_export

    engine = Runtime.TENSORRT in runtimes and tensorrt_available()[0]
    with tempfile.TemporaryDirectory(prefix=f"deploykit-bench-{preset.name}-") as tmp:
        say(
            f"exporting {preset.name} (default config, FP32 + FP16{' + engine' if engine else ''}) into a "
            f"temporary directory first; `deploykit export {preset.name} --fp16` keeps the files"
        )
        run_export(ExportRequest.create(preset.name, out_dir=Path(tmp), fp16=True, engine=engine))
        yield Path(tmp), True


def _eager_model(directory: Path, with_weights: bool, weights=None, weights_format=None) -> nn.Module:
    """The model the export came from, rebuilt as it records it (preset, classes, resolution, seed and the
    weights: ``weights``, else the recorded file; see :func:`~deploykit.workflows.validate.rebuild_model`);
    without ``with_weights`` (torch is not benchmarked) only its shape matters and no weights load."""
    from dataclasses import replace

    from deploykit.workflows.validate import artifact_preset, rebuild_model

    path = directory / ONNX_FILES[Variant.FP32]
    record = artifact_record(path, meta=None if path.is_file() else {})  # else: the manifest's record
    weights = weights if with_weights else None
    if not with_weights:
        record = replace(record, weights_file=None, weights_state_sha256=None, weights_source="")
    hint = "pass --weights FILE, or leave torch out: --runtime onnxruntime,tensorrt"
    args = {"weights": weights, "weights_format": weights_format, "hint": hint}
    return rebuild_model(path, record, artifact_preset(path, record), None, **args).model


def _runners(
    directory: Path,
    runtimes: Sequence[Runtime],
    *,
    threads: int,
    model: nn.Module | None,
    say: Callable[[str], None],
    skipped: list[dict[str, Any]],
) -> list[tuple[Runtime, Variant, Runner, tuple[int, int] | None, str | None]]:
    """``(runtime, precision, runner, batch range or None, file name or None)`` for every artifact of
    ``directory`` that ``runtimes`` asks for and this machine can run; the rest go to ``skipped`` with the
    reason."""
    out: list[tuple[Runtime, Variant, Runner, tuple[int, int] | None, str | None]] = []
    if Runtime.TORCH in runtimes:
        from deploykit.runtime.torch_runner import TorchRunner

        out.append((Runtime.TORCH, Variant.FP32, TorchRunner(model), None, None))
    if Runtime.ONNXRUNTIME in runtimes:
        out += _onnx_runners(directory, threads, say, skipped)
    if Runtime.TENSORRT in runtimes:
        out += _engine_runners(directory, say, skipped)
    return out


def _onnx_runners(directory: Path, threads: int, say, skipped: list[dict[str, Any]]) -> list[tuple]:
    from deploykit.runtime.ort_runner import OrtRunner

    out = []
    for precision, name in ONNX_FILES.items():
        path = directory / name
        if not path.is_file():
            if precision is Variant.FP32:
                raise ArtifactError(f"{directory}: no {name} (the export's FP32 artifact)")
            reason = f"no {name} ({_MISSING.get(precision, 'not exported')})"
            skipped.append({"runtime": Runtime.ONNXRUNTIME, "precision": precision, "reason": reason})
            continue
        say(f"loading {name} (ONNX Runtime, {threads} threads)")
        out.append((Runtime.ONNXRUNTIME, precision, OrtRunner(path, threads=threads), None, name))
    return out


def _engine_runners(directory: Path, say, skipped: list[dict[str, Any]]) -> list[tuple]:
    """One TensorRT runner per precision among the engines of ``directory`` (where TensorRT runs)."""
    from deploykit.core.artifacts import ENGINE_SUFFIXES
    from deploykit.engine.device import tensorrt_available

    ok, reason = tensorrt_available()
    engines = sorted(p for p in directory.iterdir() if p.suffix in ENGINE_SUFFIXES and p.is_file())
    if not ok or not engines:
        if ok:
            reason = f"no engine in {directory} (deploykit build {directory / 'model.fp16.onnx'})"
        skipped.append({"runtime": Runtime.TENSORRT, "precision": None, "reason": reason})
        return []
    from deploykit.engine.runner import TensorRTRunner

    out, seen = [], {}
    for path in engines:
        say(f"loading {path.name} (TensorRT)")
        runner = TensorRTRunner(path)
        if runner.variant in seen:
            reason = f"{path.name}: {seen[runner.variant]} is already the {runner.variant} engine"
            skipped.append({"runtime": Runtime.TENSORRT, "precision": runner.variant, "reason": reason})
            continue
        seen[runner.variant] = path.name
        out.append((Runtime.TENSORRT, runner.variant, runner, runner.batch_range, path.name))
    return out


def _check_counts(*, iters: int, warmup: int, settle_ms: float, threads: int | None) -> None:
    if iters < 1:
        raise ConfigError(f"--iters must be at least 1, got {iters}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {warmup}")
    if settle_ms < 0:
        raise ConfigError(f"settle_ms must be 0 or more, got {settle_ms}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")


def run_bench(
    target: str | Path,
    *,
    batches: str | Sequence[int] = (1, 8),
    runtimes: str | Sequence[str] = RUNTIMES,
    threads: int | None = None,
    warmup: int = 5,
    iters: int = 30,
    progress: BenchProgress | None = None,
    settle_ms: float = 50.0,
    weights: str | Path | None = None,
    weights_format: str | None = None,
) -> BenchReport:
    """Benchmark the export ``target`` (an export directory, an ``.onnx`` / engine file in one, or a preset
    name, which is first exported with its default config into a temporary directory) on ``runtimes`` at
    every batch size of ``batches``: ``warmup`` untimed and ``iters`` timed rounds, each running every case
    once in a shuffled order (after ``settle_ms`` of untimed runs of that case, see the module docstring).
    ``threads`` (default: the physical cores) is used by PyTorch, ONNX Runtime and the MatMul probe alike.
    ``progress`` hears of each step and timing round (default: nothing is said). An existing path wins
    over a preset of the same name. ``weights``: the export's, when its recorded weights file moved. A
    runtime that is not installed here (PyTorch, ONNX Runtime) is skipped with the reason."""
    batches = parse_batches(batches)
    runtimes = parse_runtimes(runtimes)
    _check_counts(iters=iters, warmup=warmup, settle_ms=settle_ms, threads=threads)

    progress = progress or BenchProgress()
    say = progress.say
    skipped: list[dict[str, Any]] = []
    with _export_dir(target, runtimes, say) as (directory, temporary):
        manifest = read_export_manifest(directory)
        input_size = tuple(int(v) for v in manifest.input_dims)
        usable = _installed(runtimes, skipped)
        with _threads(threads, torch=Runtime.TORCH in usable) as threads:
            model = None
            if Runtime.TORCH in usable:
                say(f"building {manifest.preset} (torch eager, from {manifest_path(directory)})")
                model = _eager_model(directory, True, weights, weights_format)
            flops = graph_flops(directory)
            gflop_per_image = None if flops is None else flops / 1e9
            runners = _runners(directory, usable, threads=threads, model=model, say=say, skipped=skipped)
            cases = _some(make_cases(runners, batches, input_size, skipped), directory, skipped)
            timing = {"warmup": warmup, "iters": iters, "settle_s": settle_ms / 1e3, "progress": progress}
            machine = _time_with_ceilings(cases, threads, **timing)

    results = case_results(cases, gflop_per_image, machine)
    return BenchReport(
        target=str(target),
        preset=manifest.preset,
        artifact_dir=None if temporary else str(directory.resolve()),
        input_shape=input_size,
        gflop_per_image=gflop_per_image,
        results=results,
        skipped=skipped,
        machine=machine,
        settings=_settings(
            batches, runtimes, threads=threads, warmup=warmup, iters=iters, settle_ms=settle_ms
        ),
    )


def _some(cases: list, directory: Path, skipped: list[dict[str, Any]]) -> list:
    """``cases``, or one :class:`ArtifactError` line with every reason when there is nothing to time."""
    if not cases:
        reasons = "; ".join(f"{s['runtime']}: {s['reason']}" for s in skipped)
        raise ArtifactError(f"nothing to benchmark in {directory} ({reasons or 'no runtime asked for'})")
    return cases


#: the runtimes that are a Python package, by the module that must import
_RUNTIME_MODULES = {Runtime.TORCH: "torch", Runtime.ONNXRUNTIME: "onnxruntime"}


def _installed(runtimes: Sequence[Runtime], skipped: list[dict[str, Any]]) -> tuple[Runtime, ...]:
    """``runtimes`` without those not installed here, each of which goes to ``skipped`` with the line
    naming the extra that installs it (a device install has no PyTorch)."""
    kept = []
    for runtime in runtimes:
        module = _RUNTIME_MODULES.get(runtime)
        if module is None or have(module):
            kept.append(runtime)
            continue
        reason = str(missing(module))
        skipped.append({"runtime": runtime, "precision": None, "reason": reason})
    return tuple(kept)


@contextmanager
def _threads(threads: int | None, *, torch: bool) -> Iterator[int]:
    """The thread count of the benchmark: ``threads``, else the physical cores (PyTorch's own default,
    where PyTorch is benchmarked: its thread count is set for the run and restored after)."""
    if not torch:
        yield threads or physical_cores()
        return
    torch_module = require("torch", "bench --runtime torch")
    previous = torch_module.get_num_threads()
    torch_module.set_num_threads(threads or previous)
    try:
        yield threads or previous
    finally:
        torch_module.set_num_threads(previous)


def physical_cores() -> int:
    """The physical cores this process may run on (one per set of hyper-thread siblings), as PyTorch and
    ONNX Runtime count them by default; the logical count where the topology is unreadable."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            cores.add(topology.read_text().strip())
        except OSError:
            return len(allowed)
    return max(1, len(cores))


def _time_with_ceilings(cases, threads: int, *, progress: BenchProgress, **timing):
    """Time ``cases`` between two MatMul ceiling probes; the machine record keeps the better probe of each
    precision (in case the first was disturbed)."""
    if have("onnxruntime"):
        progress.say(f"MatMul ceiling probe (ONNX Runtime, {threads} threads)")
    probed = (ceiling_precision(c.precision) for c in cases if c.runtime is not Runtime.TORCH)
    precisions = sorted({Precision.FP32, *probed})
    gpu = any(c.runtime is Runtime.TENSORRT for c in cases)
    machine = machine_info(threads, precisions, gpu=gpu)
    time_cases(cases, progress=progress, **timing)
    for precision in precisions:
        key = f"matmul_gflops_{precision}"
        again = matmul_ceiling(threads, precision)
        if again is not None:
            machine[key] = max(machine.get(key) or 0.0, again)
    return machine


def _settings(batches, runtimes, *, threads, warmup, iters, settle_ms) -> dict[str, Any]:
    return {
        "batches": list(batches),
        "runtimes": list(runtimes),
        "threads": threads,
        "warmup_rounds": warmup,
        "timed_rounds": iters,
        "order": "every round runs each case once, in a seeded random order (interleaved)",
        "settle_ms": settle_ms,
        "input": f"fixed standard-normal batch (seed {INPUT_SEED}) in each runner's input dtype",
        "timing": dict(TIMING),
    }
