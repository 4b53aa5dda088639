"""``deploykit bench``'s results: one :class:`CaseResult` per runtime x precision x batch in a
:class:`BenchReport` (JSON), rendered as a table and, with the ``[plot]`` extra, a PNG of the latency
distributions."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.artifacts import Named, Variant
from deploykit.core.errors import ConfigError
from deploykit.workflows.bench.flops import FLOPS_COUNTED

if TYPE_CHECKING:
    from rich.table import Table


class Runtime(Named):
    """What runs a case, in the order the results list them."""

    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


#: (runtime, precision) -> what the table's precision column says
PRECISION_LABELS = {
    (Runtime.ONNXRUNTIME, Variant.INT8): "int8 Q/DQ (TRT graph)",
    (Runtime.ONNXRUNTIME, Variant.INT8_CPU): "int8 dynamic (CPU)",
}
#: a note under the table for each INT8 artifact it shows
INT8_NOTES = {
    Variant.INT8: "int8 Q/DQ: model.int8.onnx, the graph TensorRT builds its INT8 engine from, run by ONNX "
    "Runtime here (its speed is not TensorRT's)",
    Variant.INT8_CPU: "int8 dynamic: model.int8.cpu.onnx, ONNX Runtime dynamic quantization (the CPU artifact)",
}

#: how each case is timed (the bench JSON's ``settings.timing``)
TIMING = {
    "host": "min/p50/p90/p99/mean_ms: host end to end, perf_counter around one run call (copies in and out "
    "and the synchronisation included)",
    "gpu": "gpu_ms (TensorRT rows): the engine's GPU compute alone, CUDA events on the runner's stream around "
    "execute_async_v3 (the copies are not in it)",
}


@dataclass(frozen=True, kw_only=True)
class CaseResult:
    """One runtime x precision x batch: latency statistics over the timed rounds (``samples_ms`` is kept
    for plots but not written to JSON). The ``*_ms`` fields are host end-to-end times; ``gpu_ms`` the GPU
    compute alone where it was measured (TensorRT engines, by CUDA events)."""

    runtime: Runtime
    precision: Variant
    batch: int
    runner: str
    samples_ms: tuple[float, ...]
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    #: None: the model's FLOPs are unknown (no ONNX graph to count them on)
    gflops: float | None
    #: the ONNX Runtime execution provider the session really ran on (CUDA asked, CPU ran: CPU)
    provider: str | None = None
    #: {"min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms"} of the GPU compute alone, where measured
    gpu_ms: dict[str, float] | None = None
    ratio_to_torch: float | None = None
    pct_of_matmul_ceiling: float | None = None
    #: p50 over ONNX Runtime's FP32 artifact (model.onnx) at the same batch; None for eager PyTorch
    ratio_to_fp32: float | None = None
    #: the file that ran (model.int8.cpu.onnx, ...); None: eager PyTorch
    artifact: str | None = None

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"

    @property
    def shown_runtime(self) -> str:
        """The runtime as the table shows it: ONNX Runtime rows name the provider that ran."""
        if self.provider is None:
            return str(self.runtime)
        return f"{self.runtime} ({self.provider.removesuffix('ExecutionProvider')})"

    @property
    def shown_precision(self) -> str:
        """The precision as the table shows it: the INT8 graphs say which one ran."""
        return PRECISION_LABELS.get((self.runtime, self.precision), self.precision)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "batch": self.batch,
            "min_ms": self.min_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "gpu_ms": None if self.gpu_ms is None else dict(self.gpu_ms),
            "images_per_s": self.images_per_s,
            "gflops": self.gflops,
            "ratio_to_torch": self.ratio_to_torch,
            "pct_of_matmul_ceiling": self.pct_of_matmul_ceiling,
            "ratio_to_fp32": self.ratio_to_fp32,
            "artifact": self.artifact,
            "runner": self.runner,
            "provider": self.provider,
        }


@dataclass(kw_only=True)
class BenchReport:
    """What :func:`run_bench` measured; :meth:`to_dict` is the ``--json`` document."""

    target: str
    preset: str
    artifact_dir: str | None  # None: a preset exported into a temporary directory
    input_shape: tuple[int, ...]  # (C, H, W)
    #: None: unknown (no ONNX graph to count on, or a shape inference left open)
    gflop_per_image: float | None
    results: list[CaseResult]
    skipped: list[dict[str, Any]]
    machine: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def result(self, runtime: str, precision: str, batch: int) -> CaseResult | None:
        return next(
            (r for r in self.results if (r.runtime, r.precision, r.batch) == (runtime, precision, batch)),
            None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": [r.to_dict() for r in self.results],
            "skipped": list(self.skipped),
            "model": {
                "preset": self.preset,
                "target": self.target,
                "artifact_dir": self.artifact_dir,
                "input_shape": list(self.input_shape),
                "gflop_per_image": self.gflop_per_image,
                "flops_counted": FLOPS_COUNTED,
            },
            "settings": dict(self.settings),
            "machine": dict(self.machine),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def format_table(report: BenchReport) -> Table:
    """The results as a rich table, one row per case, grouped by batch size."""
    from rich.table import Table

    m = report.machine
    gpu = any(r.gpu_ms for r in report.results)
    table = Table(
        title=f"deploykit bench: {report.preset} {'x'.join(map(str, report.input_shape))}, "
        f"{m['threads']} threads, median of {report.settings.get('timed_rounds')} interleaved rounds",
        caption=_caption(report, gpu),
    )
    columns = ["runtime", "precision", "batch", "min ms", "p50 ms", "p90 ms", "p99 ms", "mean ms"]
    columns += ["GPU p50 ms"] if gpu else []
    columns += ["images/s", "x torch", "x fp32", "GFLOP/s", "% ceiling"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("runtime", "precision") else "right")
    previous = None
    for r in report.results:
        if previous is not None and r.batch != previous:
            table.add_section()
        previous = r.batch
        cells = [
            r.shown_runtime,
            r.shown_precision,
            str(r.batch),
            *(f"{v:.2f}" for v in (r.min_ms, r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms)),
            *([f"{r.gpu_ms['p50_ms']:.2f}" if r.gpu_ms else ""] if gpu else []),
            f"{r.images_per_s:.1f}",
            "" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.2f}",
            "" if r.ratio_to_fp32 is None else f"{r.ratio_to_fp32:.2f}",
            "" if r.gflops is None else f"{r.gflops:.1f}",
            "" if r.pct_of_matmul_ceiling is None else f"{r.pct_of_matmul_ceiling:.0f}%",
        ]
        table.add_row(*cells)
    return table


def _caption(report: BenchReport, gpu: bool) -> str:
    m = report.machine
    shown = {r.precision for r in report.results if r.runtime is Runtime.ONNXRUNTIME}
    flops = "unknown" if report.gflop_per_image is None else f"{report.gflop_per_image:.3f}"
    jetson = m.get("jetson") or {}
    return (
        f"{m['cpu']}; ONNX Runtime MatMul ceiling {_num(m.get('matmul_gflops_fp32'))} GFLOP/s fp32"
        + (f", {_num(m['matmul_gflops_fp16'])} fp16" if m.get("matmul_gflops_fp16") else "")
        + (f", {_num(m['matmul_gflops_int8'])} GOP/s int8" if m.get("matmul_gflops_int8") else "")
        + f"; model {flops} GFLOP/image; x fp32: p50 over ONNX Runtime's model.onnx"
        + "\nms: host end to end (copies and synchronisation included)"
        + ("; GPU p50 ms: the engine's GPU compute alone (CUDA events)" if gpu else "")
        + (
            f"\n{jetson.get('model')}: power mode {jetson.get('power_mode')}, clocks "
            f"{'locked' if jetson.get('clocks_locked') else 'NOT locked'}"
            if jetson
            else ""
        )
        + "".join(f"\n{INT8_NOTES[p]}" for p in INT8_NOTES if p in shown)
    )


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def require_matplotlib() -> None:
    """Raise :class:`ConfigError` unless matplotlib (the ``[plot]`` extra) imports; call before benchmarking."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--plot needs matplotlib (pip install 'deploykit[plot]')") from None


def plot(report: BenchReport, path: str | Path) -> Path:
    """A PNG of the latency distributions: one panel per batch size, one box per runtime x precision
    (whiskers at min and max, every sample drawn). Written atomically."""
    require_matplotlib()
    import numpy as np
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    from deploykit.core.io import atomic_write_bytes

    batches = sorted({r.batch for r in report.results})
    fig = Figure(figsize=(max(4.0, 3.2 * len(batches) + 1), 4.2), layout="constrained")
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, batch in zip(axes, batches):
        rows = [r for r in report.results if r.batch == batch]
        samples = [r.samples_ms for r in rows]
        ax.boxplot(samples, whis=(0, 100), widths=0.55, medianprops={"color": "black"})
        for i, s in enumerate(samples, 1):
            ax.plot(i + rng.uniform(-0.12, 0.12, len(s)), s, ".", alpha=0.45, markersize=4)
        ax.set_xticks(range(1, len(rows) + 1), [r.label.replace(" ", "\n") for r in rows])
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency (ms)")
        low, high = min(min(x) for x in samples), max(max(x) for x in samples)
        if high > 10 * low:  # a few slow outliers would flatten every box on a linear axis
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{report.preset}: latency per runtime\n({report.machine['threads']} threads, "
        f"{report.settings.get('timed_rounds')} interleaved rounds)",
        fontsize="medium",
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())
