"""``deploykit bench``."""

from __future__ import annotations

from typing import Any

import click

from deploykit.cli.app import WEIGHTS_FORMATS, cli, handle_errors


@cli.command("bench")
@click.argument("target", metavar="ARTIFACT|PRESET")
@click.option("--batch", "batch", default="1,8", show_default=True, help="Batch sizes, comma-separated.")
@click.option(
    "--runtime",
    "runtime",
    default="torch,onnxruntime,tensorrt",
    show_default=True,
    help="Runtimes to benchmark, comma-separated.",
)
@click.option(
    "--threads", type=int, help="Threads for PyTorch and ONNX Runtime (default: the physical cores)."
)
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed rounds first.")
@click.option("--iters", type=int, default=30, show_default=True, help="Timed rounds (samples per case).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option(
    "--plot", "plot_out", type=click.Path(dir_okay=False), help="Write latency distributions as a PNG."
)
@click.option(
    "--weights",
    type=click.Path(),
    help="Weights of the export, for torch eager (default: the file its manifest.json records).",
)
@click.option(
    "--weights-format",
    type=click.Choice(WEIGHTS_FORMATS),
    help="Checkpoint layout of --weights (default: detected from its keys).",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@handle_errors
def bench_cmd(target: str, **options: Any) -> None:
    """Latency of ARTIFACT (an export directory, or an .onnx / engine file in one) or of PRESET (exported
    into a temporary directory first) on PyTorch eager, ONNX Runtime FP32/FP16 and TensorRT, interleaved
    in one process: min/p50/p90/p99/mean ms, images/s, ratio to eager, GFLOP/s beside the MatMul ceiling.
    ONNX Runtime rows name the provider that ran; engines add the GPU time alone (CUDA events). Without
    PyTorch (a device) eager is skipped; a Jetson's power mode and clocks are recorded."""
    from rich.console import Console

    from deploykit.core.io import atomic_write_text
    from deploykit.workflows.bench import run_bench
    from deploykit.workflows.bench.report import format_table, plot, require_matplotlib

    json_out, plot_out, quiet = options.pop("json_out"), options.pop("plot_out"), options.pop("quiet")
    if plot_out:
        require_matplotlib()
    progress = None if quiet else RichProgress(Console(stderr=True))
    report = run_bench(
        target,
        batches=options.pop("batch"),
        runtimes=options.pop("runtime"),
        progress=progress,
        **options,
    )
    # wide enough for every column (the provider that ran, the GPU time) on one line per row
    Console(width=max(Console().width, 170)).print(format_table(report))
    for s in report.skipped:
        precision = f" {s['precision']}" if s["precision"] else ""
        click.echo(f"skipped {s['runtime']}{precision}: {s['reason']}")
    if json_out:
        atomic_write_text(json_out, report.to_json())
        click.echo(f"wrote {json_out}")
    if plot_out:
        plot(report, plot_out)
        click.echo(f"wrote {plot_out}")


class RichProgress:
    """bench's steps and timing rounds on stderr: a dim ``bench`` line per step, a transient bar."""

    def __init__(self, console) -> None:
        self.console, self.bar, self.task = console, None, None

    def say(self, message: str) -> None:
        self.console.print(f"[dim]bench[/dim] {message}", highlight=False)

    def start(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        self.bar = Progress(*columns, console=self.console, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("warm-up", total=total)

    def advance(self, phase: str) -> None:
        self.bar.update(self.task, description=phase, advance=1)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
