"""Command-line interface. Library code raises typed errors; only this module turns them into one-line
messages and exit codes (0 ok, 1 parity failed, 2 bad usage or input, 3 engine stage unavailable, 130
interrupted by SIGINT, 143 terminated by SIGTERM)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from deploykit import __version__
from deploykit.core.errors import DeployKitError, one_line
from deploykit.core.interrupts import Terminated, handle_signals

#: the layouts of ``deploykit.models.pretrained.FORMATS``, spelled out so that ``--help`` imports no torch
WEIGHTS_FORMATS = (
    "hf-cvt",
    "official-cvt",
    "timm-convit",
    "official-ceit",
    "official-deepvit",
    "official-hvt",
    "deploykit",
)


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn DeployKitError (and OSError) into one clear line on stderr and the error's exit code. The line
    is the last defence of the one-line rule: a line break or terminal escape in a message (a file name,
    a value read from a file) is printed escaped (``\\n``), so no error can span two lines or fake one."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return fn(*args, **kwargs)
        except DeployKitError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(one_line(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")), err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was published", err=True)
            sys.exit(130)
        except Terminated as exc:
            click.echo("terminated: nothing was published", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deploykit")
@click.option("--verbose", is_flag=True, help="Show tracebacks on errors.")
def cli(verbose: bool) -> None:
    """deploykit: export ConViT, CeiT, DeepViT, CvT and HVT to ONNX / TensorRT and prove parity."""


@cli.command("list")
@click.argument("pattern", required=False)
@_handle_errors
def list_cmd(pattern: str | None) -> None:
    """List registered presets (optionally matching an fnmatch PATTERN such as 'cvt*')."""
    from deploykit.workflows.info import list_command

    list_command(pattern)


@cli.command("export")
@click.argument("model")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Export config TOML (default: export_configs/<family>.toml).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default ./deploykit_out/<preset>/).",
)
@click.option("--opset", type=int, help="ONNX opset (17-24).")
@click.option("--batch", help="Batch profile MIN,OPT,MAX.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=True),
    help="Weights to load first: a .pth/.pt/.bin/.safetensors file or a Hugging Face save_pretrained "
    "directory (timm ConViT, HF or official CvT, official CeiT/DeepViT/HVT, or deploykit's own layout).",
)
@click.option(
    "--weights-format",
    type=click.Choice(WEIGHTS_FORMATS),
    help="Checkpoint layout of --weights (default: detected from its keys).",
)
@click.option(
    "--exporter", type=click.Choice(["dynamo", "torchscript"]), help="torch exporter (default dynamo)."
)
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim/onnxslim.")
@click.option("--inputs", "inputs_dir", type=click.Path(), help="Folder of your own validation images.")
@click.option(
    "--fp16", is_flag=True, help="Also write model.fp16.onnx (FP16 with FP32 islands), verified on CPU."
)
@click.option("--fp16-io", is_flag=True, help="FP16 graph inputs/outputs (default: FP32 I/O).")
@click.option(
    "--int8",
    is_flag=True,
    help="Also write model.int8.onnx (TensorRT Q/DQ on the FP16 graph; implies --fp16) and "
    "model.int8.cpu.onnx (ONNX Runtime dynamic INT8), both gated against PyTorch FP32.",
)
@click.option(
    "--calib",
    type=click.Path(),
    help="INT8 calibration images: a folder, or an ImageFolder (class subfolders: accuracy is reported "
    "and gated). Default: the bundled images.",
)
@click.option("--calib-count", type=int, help="INT8 calibration images to use (default 64).")
@click.option(
    "--calib-method",
    type=click.Choice(["entropy", "max", "percentile"]),
    help="INT8 activation ranges (default entropy).",
)
@click.option("--no-engine", is_flag=True, help="Skip the TensorRT engine stage.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to load and save."
)
@click.option(
    "--image-size",
    type=int,
    help="Input resolution (default: the checkpoint's position grid, else the preset's).",
)
@click.option(
    "--num-classes", type=int, help="Classifier classes, 0 for features (default: the checkpoint's head)."
)
@click.option(
    "--labels", type=click.Path(dir_okay=False), help="Class names, one per line; stored in the artifact."
)
@click.option(
    "--crop-pct", type=float, help="Preprocessing: centre-crop fraction (resize to SIZE / crop_pct)."
)
@click.option("--mean", help="Preprocessing: per-channel mean, e.g. 0.5,0.5,0.5.")
@click.option("--std", help="Preprocessing: per-channel std, e.g. 0.5,0.5,0.5.")
@click.option(
    "--interpolation",
    type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]),
    help="Preprocessing: resize filter.",
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def export_cmd(model: str, **options: Any) -> None:
    """Export MODEL (a preset or family alias) to a validated, simplified, dynamic-batch ONNX file."""
    from deploykit.workflows.pipeline import export_command

    export_command(model, **options)


@cli.command("inspect")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the facts as JSON.")
@_handle_errors
def inspect_cmd(onnx_file: str, json_out: str | None) -> None:
    """Opset, inputs/outputs, op histogram, size, metadata and TensorRT-parser lint of ONNX_FILE."""
    from deploykit.workflows.info import inspect_command

    inspect_command(onnx_file, json_out)


@cli.command("validate")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model",
    help="Preset the artifact was exported from (default: the one it records; a different one is an error).",
)
@click.option(
    "--weights",
    type=click.Path(),
    help="Weights the artifact was exported with (default: the file its manifest.json records; other "
    "weights than the recorded ones are an error).",
)
@click.option(
    "--weights-format",
    type=click.Choice(WEIGHTS_FORMATS),
    help="Checkpoint layout of --weights (default: detected from its keys).",
)
@click.option("--inputs", "inputs_dir", type=click.Path(), help="Folder of your own validation images.")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Export config with the tolerances."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the parity report as JSON.")
@click.option("--junit", "junit_out", type=click.Path(dir_okay=False), help="Write a JUnit XML report.")
@click.option(
    "--locate", is_flag=True, help="On failure, name the first PyTorch module whose output diverges."
)
@click.option(
    "--baseline",
    "baseline_path",
    type=click.Path(dir_okay=False),
    help="Baseline JSON: exit 1 when a metric regresses past [validation] baseline_factor of it.",
)
@click.option("--update-baseline", is_flag=True, help="Write the metrics to --baseline instead of comparing.")
@click.option(
    "--reference",
    type=click.Path(dir_okay=False),
    help="A golden reference.npz (default: the one beside ARTIFACT). Without --model, or without torch, "
    "the artifact is checked against its stored PyTorch outputs; with --model the outputs are recomputed "
    "on its images.",
)
@_handle_errors
def validate_cmd(artifact: str, **options: Any) -> None:
    """Check ARTIFACT (.onnx, or a TensorRT .engine) against the PyTorch model it was exported from.

    The artifact records its preset, classes, resolution and weights: the model is rebuilt from that.
    Exit 0 parity holds (and no metric regressed from --baseline); 1 parity fails or a metric regressed;
    2 bad usage or input.
    """
    from deploykit.workflows.validate import validate_command

    sys.exit(validate_command(artifact, **options))


@cli.command("predict")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", "top_k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Class names, one per line (default: the artifact's own, else ImageNet-1k names for 1000-class "
    "models).",
)
@click.option(
    "--batch", "batch_size", type=int, help="Images per forward pass (default: 8, or the engine's max)."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@_handle_errors
def predict_cmd(
    artifact: str,
    images: tuple[str, ...],
    top_k: int,
    labels: str | None,
    batch_size: int | None,
    json_out: str | None,
) -> None:
    """Classify IMAGES (files or folders of images) with ARTIFACT (.onnx, or a TensorRT .engine/.plan).

    Preprocessing (resize, crop, interpolation, mean/std) and class names come from the artifact's own
    record; one warning line on stderr when it was exported with random weights. Exit 0 done; 2 bad input
    (missing, unreadable or truncated image, bad or headless artifact, bad option).
    """
    from deploykit.workflows.predict import predict_command

    predict_command(artifact, images, top_k=top_k, labels=labels, batch_size=batch_size, json_out=json_out)


@cli.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--batch", help="Optimization profile MIN,OPT,MAX (default: the config's [batch]).")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="Export config for [batch]/[engine]."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False),
    help="Timing cache to load and save (default <dir>/timing.cache).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Output directory (default: beside the ONNX file).",
)
@_handle_errors
def build_cmd(onnx_file: str, **options: Any) -> None:
    """Build a TensorRT engine (10.3+ or 11.x) from ONNX_FILE, strongly typed: FP16 comes from an FP16 graph.

    Exit 0 built; 1 an FP16 graph came out FP32; 2 bad input or build failure; 3 TensorRT or a GPU is
    missing (then build_engine.sh with the equivalent trtexec command is written instead).
    """
    from deploykit.workflows.build import build_command

    build_command(onnx_file, **options)


@cli.command("triton")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option(
    "--repo", required=True, type=click.Path(file_okay=False), help="Model repository to write into."
)
@click.option("--name", help="Model name (default: the preset, e.g. hvt_ti_1).")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt", "python"]),
    default="python",
    show_default=True,
    help="python: model.py runs the ONNX with ONNX Runtime (any CPU Triton, e.g. nvidia-pytriton's).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="int8: model.int8.cpu.onnx on ONNX Runtime, model.int8.engine on the tensorrt backend.",
)
@click.option("--max-batch", type=int, help="max_batch_size (default: the export's batch profile maximum).")
@click.option(
    "--instances", type=int, default=1, show_default=True, help="Instances of the model (instance_group)."
)
@click.option("--kind", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option(
    "--queue-delay-us", type=int, default=1000, show_default=True, help="Dynamic batching queue delay."
)
@click.option(
    "--top-k", "top_k", type=int, default=5, show_default=True, help="Classes NAME_classify returns."
)
@click.option(
    "--labels", type=click.Path(dir_okay=False), help="Class names, one per line (default: the artifact's)."
)
@click.option("--version", "version", type=int, help="Version number to write (default: the next free one).")
@click.option("--force", is_flag=True, help="Replace the version if it exists.")
@click.option(
    "--ort-tensorrt", is_flag=True, help="onnxruntime on GPU: enable the TensorRT execution accelerator."
)
@_handle_errors
def triton_cmd(export_dir: str, repo: str, **options: Any) -> None:
    """Write a Triton model repository for EXPORT_DIR: NAME, NAME_preprocess, NAME_postprocess and the
    ensemble NAME_classify (image bytes in, top-k classes out)."""
    from deploykit.serving.commands import triton_command

    triton_command(export_dir, repo, **options)


@cli.command("serve")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: all interfaces)."
)
@click.option(
    "--log", "log_path", type=click.Path(dir_okay=False), help="Server log file (default: in the temp dir)."
)
@click.option(
    "--startup-timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for ready."
)
@_handle_errors
def serve_cmd(repo: str, **options: Any) -> None:
    """Serve REPO with a real Triton Inference Server until SIGINT/SIGTERM.

    Exit 0 stopped cleanly; 1 the server failed (a model did not load, it died: the reason and the log
    path in one line); 2 a bad repository; 3 no Triton server here.
    """
    from deploykit.serving.commands import serve_command

    serve_command(repo, **options)


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
@_handle_errors
def bench_cmd(target: str, **options: Any) -> None:
    """Latency of ARTIFACT (an export directory, or an .onnx / engine file in one) or of PRESET (exported
    into a temporary directory first) on PyTorch eager, ONNX Runtime FP32/FP16 and TensorRT, interleaved
    in one process: min/p50/p90/p99/mean ms, images/s, ratio to eager, GFLOP/s beside the MatMul ceiling."""
    from deploykit.workflows.bench import bench_command

    bench_command(target, **options)


def main() -> None:
    """The ``deploykit`` command: a usage error (unknown option, bad value, missing argument) is one line
    and exit 2, like every other bad input."""
    try:
        code = _run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            click.echo(str(exc.code), err=True)
    _leave(code)


def _run() -> int:
    with handle_signals():
        try:
            code = cli.main(prog_name="deploykit", standalone_mode=False)
        except click.ClickException as exc:
            hint = (
                f" (deploykit {exc.ctx.info_name} --help)"
                if getattr(exc, "ctx", None) and exc.ctx.parent
                else ""
            )
            click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            return exc.exit_code
        except click.Abort:
            click.echo("interrupted: nothing was published", err=True)
            return 130
    return code if isinstance(code, int) else 0


def _leave(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown. The command has finished (files published or
    rejected, child processes reaped, temporary folders removed); what is left is freeing the objects that
    dynamo tracing leaves behind (FX graphs, symbolic-shape caches), which took 1.4-1.9 s after a
    ``deploykit export`` here (docs/measured.md). ``atexit`` handlers still run and both streams are
    flushed first."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
