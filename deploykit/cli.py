"""Command-line interface. Library code raises typed errors; only this module turns them into one-line
messages and exit codes (0 ok, 1 parity failed, 2 bad usage or input, 3 engine stage unavailable)."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from deploykit import __version__
from deploykit.core.errors import DeployKitError

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
    """Turn DeployKitError (and OSError) into one clear line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return fn(*args, **kwargs)
        except DeployKitError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            sys.exit(2)

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
    from rich.console import Console
    from rich.table import Table

    from deploykit.models import get_preset, list_aliases, list_models, preset_parameter_count

    table = Table(title="deploykit presets")
    for col in ("preset", "family", "params (M)", "reference (M)", "input size", "reference"):
        table.add_column(col, justify="right" if "(M)" in col else "left")
    for name in list_models(pattern):
        p = get_preset(name)
        params = preset_parameter_count(name)
        ref = (
            "" if p.reference_params_m is None else f"{p.reference_params_m:.{p.reference_params_decimals}f}"
        )
        size = p.kwargs.get("image_size", 224)
        table.add_row(name, p.family, f"{params / 1e6:.3f}", ref, f"{size}x{size}", p.reference)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    aliases = ", ".join(f"{a} -> {t}" for a, t in list_aliases().items())
    console.print(f"family aliases: {aliases}")


class _Progress:
    """Per-stage progress lines on stderr (``--quiet`` silences them)."""

    def __init__(self, quiet: bool) -> None:
        import time

        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.clock = time.perf_counter

    def __call__(self, stage: str, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{self.clock() - self.t0:6.1f}s] {stage:<14} {message}", err=True)


def _resolve_config(
    family: str,
    config_path: str | None,
    opset: int | None,
    batch: str | None,
    exporter: str | None,
    no_simplify: bool,
):
    import dataclasses

    from deploykit.core.config import BatchProfile, default_config, load_config
    from deploykit.core.errors import ConfigError

    config = load_config(config_path) if config_path else default_config(family)
    if config.family != family:
        raise ConfigError(f"config {config.source} is for family {config.family!r}, the model is {family!r}")
    changes: dict[str, Any] = {}
    if opset is not None:
        changes["opset"] = opset
    if batch is not None:
        changes["batch"] = BatchProfile.parse(batch)
    if exporter is not None:
        changes["exporter"] = exporter
    if no_simplify:
        changes["simplify"] = False
    return dataclasses.replace(config, **changes) if changes else config


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
@click.option("--no-engine", is_flag=True, help="Skip the TensorRT engine stage.")
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False), help="TensorRT timing cache to load and save."
)
@click.option("--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def export_cmd(
    model: str,
    config_path: str | None,
    out_dir: str | None,
    opset: int | None,
    batch: str | None,
    weights: str | None,
    weights_format: str | None,
    exporter: str | None,
    no_simplify: bool,
    inputs_dir: str | None,
    fp16: bool,
    fp16_io: bool,
    no_engine: bool,
    timing_cache: str | None,
    quiet: bool,
) -> None:
    """Export MODEL (a preset or family alias) to a validated, simplified, dynamic-batch ONNX file."""
    from deploykit.core.errors import ConfigError
    from deploykit.models import get_preset
    from deploykit.workflows.pipeline import run_export

    preset = get_preset(model)
    config = _resolve_config(preset.family, config_path, opset, batch, exporter, no_simplify)
    if fp16_io and not fp16:
        raise ConfigError("--fp16-io needs --fp16")
    result = run_export(
        preset.name,
        out_dir,
        config,
        weights,
        inputs_dir,
        progress=_Progress(quiet),
        fp16=fp16,
        fp16_io=fp16_io,
        engine=not no_engine,
        timing_cache=timing_cache,
        weights_format=weights_format,
    )
    final = result.parity["dynamic batch"]
    lint = result.manifest["lint"]
    click.echo(
        f"exported {preset.name} -> {result.onnx_path}  "
        f"(max abs logit error {final.worst_metric('max_abs'):.2e}, top-1 agreement "
        f"{final.worst_metric('top1'):.0%}, lint violations {len(lint['violations'])})"
    )
    if fp16:
        half = result.parity["fp16"]
        info = result.manifest["fp16"]
        click.echo(
            f"fp16 -> {result.out_dir / 'model.fp16.onnx'}  (cosine min {half.worst_metric('cosine_min'):.6f}, top-1 "
            f"{half.worst_metric('top1'):.1%} ({half.worst_metric('top1_decisive'):.1%} counting near-ties as agreement), max abs {half.worst_metric('max_abs'):.2e} on {info['images']} images; "
            f"{info['size_ratio']:.2f}x the fp32 file; {len(info['kept_fp32'])} nodes kept FP32; "
            f"lint violations {len(info['lint']['violations'])})"
        )
    engine = result.manifest["engine"]
    if engine["status"].startswith("skipped"):
        click.echo(
            f"engine: {engine['status']}; run {result.out_dir / engine['script']} on the target GPU "
            "(trtexec of TensorRT 10.3+ or 11.x) to build it there"
        )
    elif engine["status"] == "built":
        click.echo(f"engine -> {result.out_dir / 'model.engine'} ({engine.get('precision', '')})")


@cli.command("inspect")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the facts as JSON.")
@_handle_errors
def inspect_cmd(onnx_file: str, json_out: str | None) -> None:
    """Opset, inputs/outputs, op histogram, size, metadata and TensorRT-parser lint of ONNX_FILE."""
    import json
    from collections import Counter
    from pathlib import Path

    from deploykit.core.io import atomic_write_text
    from deploykit.core.onnx_io import io_signature, load_onnx
    from deploykit.transforms.lint import format_report, lint_model

    proto = load_onnx(onnx_file)
    size = Path(onnx_file).stat().st_size
    opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
    ops = Counter(n.op_type for n in proto.graph.node)
    sig = io_signature(proto)
    lint = lint_model(proto)
    click.echo(
        f"{onnx_file}: {size / 1e6:.2f} MB, {len(proto.graph.node)} nodes, "
        f"{len(proto.graph.initializer)} initializers, opsets {opsets}"
    )
    for kind in ("inputs", "outputs"):
        for v in sig[kind]:
            click.echo(f"  {kind[:-1]:<6} {v['name']}: {v['dtype']} {v['shape']}")
    click.echo("  ops: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
    for p in proto.metadata_props:
        click.echo(f"  meta {p.key} = {p.value}")
    click.echo(
        "  lint: " + ("no TensorRT-parser violations" if lint.ok else f"{len(lint.violations)} violation(s)")
    )
    if not lint.ok:
        click.echo(format_report(lint))
    if json_out:
        facts = {
            "file": onnx_file,
            "bytes": size,
            "nodes": len(proto.graph.node),
            "opsets": opsets,
            "ops": dict(ops.most_common()),
            **sig,
            "metadata": {p.key: p.value for p in proto.metadata_props},
            "lint": lint.to_dict(),
        }
        atomic_write_text(json_out, json.dumps(facts, indent=2) + "\n")


@cli.command("validate")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option(
    "--model", "model", required=True, help="Preset (or family alias) the artifact was exported from."
)
@click.option("--weights", type=click.Path(), help="Weights the artifact was exported with.")
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
@_handle_errors
def validate_cmd(
    artifact: str,
    model: str,
    weights: str | None,
    weights_format: str | None,
    inputs_dir: str | None,
    config_path: str | None,
    json_out: str | None,
    junit_out: str | None,
    locate: bool,
    baseline_path: str | None,
    update_baseline: bool,
) -> None:
    """Check ARTIFACT (.onnx, or a TensorRT .engine) against the PyTorch model.

    Exit 0 parity holds (and no metric regressed from --baseline); 1 parity fails or a metric regressed;
    2 bad usage or input.
    """
    from deploykit.core.errors import ConfigError
    from deploykit.models import get_preset
    from deploykit.validation.baseline import compare_baseline, read_baseline, write_baseline
    from deploykit.workflows.validate import validate_artifact, write_json, write_junit

    if update_baseline and not baseline_path:
        raise ConfigError("--update-baseline needs --baseline FILE")
    preset = get_preset(model)
    config = _resolve_config(preset.family, config_path, None, None, None, False)
    baseline = read_baseline(baseline_path) if baseline_path and not update_baseline else None
    report = validate_artifact(
        artifact, preset.name, weights, inputs_dir, config, weights_format=weights_format, locate=locate
    )
    if baseline is not None:
        report.regressions = compare_baseline(report, baseline, config.baseline_factor)
    if json_out:
        write_json(report, json_out)
    if junit_out:
        write_junit(report, junit_out)
    click.echo(report.summary())
    if update_baseline:
        if report.passed:
            write_baseline(report, baseline_path)
            click.echo(f"baseline written: {baseline_path}")
        else:
            click.echo(f"baseline not written: parity failed ({baseline_path} unchanged)")
    sys.exit(0 if report.passed else 1)


@cli.command("predict")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True)
@click.option("--top-k", "top_k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Class names, one per line (default: ImageNet-1k names for 1000-class models).",
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

    Preprocessing (resize, crop, interpolation, mean/std) comes from the artifact's own record of its
    preset. Exit 0 done; 2 bad input (missing, unreadable or truncated image, bad artifact, bad option).
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from deploykit.core.io import atomic_write_text
    from deploykit.runtime.preprocess import expand_image_paths
    from deploykit.workflows.predict import load

    files = expand_image_paths(images)
    predictor = load(artifact, labels=labels)
    results = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    table = Table(title=f"{artifact} ({predictor.runner.name})")
    table.add_column("image", overflow="fold")
    for col in ("#", "class", "label", "prob"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for result in results:
        for rank, top in enumerate(result.topk, 1):
            table.add_row(
                result.image if rank == 1 else "", str(rank), str(top.cls), top.label, f"{top.prob:.4f}"
            )
        table.add_section()
    Console(width=max(Console().width, 100)).print(table)
    if json_out:
        atomic_write_text(json_out, json.dumps([r.to_dict() for r in results], indent=2) + "\n")


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
def build_cmd(
    onnx_file: str, batch: str | None, config_path: str | None, timing_cache: str | None, out_dir: str | None
) -> None:
    """Build a TensorRT engine (10.3+ or 11.x) from ONNX_FILE, strongly typed: FP16 comes from an FP16 graph.

    Exit 0 built; 1 an FP16 graph came out FP32; 2 bad input or build failure; 3 TensorRT or a GPU is
    missing (then build_engine.sh with the equivalent trtexec command is written instead).
    """
    import dataclasses
    from pathlib import Path

    from deploykit.core.config import BatchProfile, ExportConfig, load_config
    from deploykit.core.errors import EngineUnavailableError
    from deploykit.core.io import ensure_writable_dir
    from deploykit.core.onnx_io import load_onnx, onnx_precision
    from deploykit.engine.builder import build_engine, onnx_input, tensorrt_available
    from deploykit.engine.script import write_build_script

    source = Path(onnx_file)
    proto = load_onnx(source)
    config = load_config(config_path) if config_path else ExportConfig(family="any")
    if batch:
        config = dataclasses.replace(config, batch=BatchProfile.parse(batch))
    out = ensure_writable_dir(Path(out_dir) if out_dir else source.parent)
    engine_path = out / f"{source.name.removesuffix('.onnx')}.engine"
    cache = Path(timing_cache) if timing_cache else out / "timing.cache"
    fp16 = onnx_precision(proto) == "fp16"
    ok, reason = tensorrt_available()
    if not ok:
        if out.resolve() != source.parent.resolve():
            import shutil

            shutil.copyfile(source, out / source.name)
        name, chw = onnx_input(source)
        script = write_build_script(
            out / source.name,
            config.batch,
            name,
            chw,
            config.workspace_mib,
            config.builder_optimization_level,
            cache.name,
            engine_path.name,
            reason,
        )
        raise EngineUnavailableError(
            f"engine not built: {reason}; wrote {script} (trtexec, TensorRT 10.3+ / 11.x)"
        )
    result = build_engine(
        source,
        engine_path,
        config.batch,
        config.workspace_mib,
        config.builder_optimization_level,
        cache,
        expect_fp16=fp16,
    )
    click.echo(
        f"built {result.engine_path} ({result.sidecar.get('precision')}, FP16 layers "
        f"{result.fp16_share:.0%}, {result.build_seconds:.1f} s) + {result.sidecar_path.name}"
    )


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
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
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
    "--labels", type=click.Path(dir_okay=False), help="Class names, one per line (default: ImageNet-1k)."
)
@click.option("--version", "version", type=int, help="Version number to write (default: the next free one).")
@click.option("--force", is_flag=True, help="Replace the version if it exists.")
@click.option(
    "--ort-tensorrt", is_flag=True, help="onnxruntime on GPU: enable the TensorRT execution accelerator."
)
@_handle_errors
def triton_cmd(
    export_dir: str,
    repo: str,
    name: str | None,
    backend: str,
    precision: str,
    max_batch: int | None,
    instances: int,
    kind: str,
    queue_delay_us: int,
    top_k: int,
    labels: str | None,
    version: int | None,
    force: bool,
    ort_tensorrt: bool,
) -> None:
    """Write a Triton model repository for EXPORT_DIR: NAME, NAME_preprocess, NAME_postprocess and the
    ensemble NAME_classify (image bytes in, top-k classes out)."""
    from deploykit.serving.repository import write_repository

    result = write_repository(
        export_dir,
        repo,
        name=name,
        backend=backend,
        max_batch=max_batch,
        instances=instances,
        kind=kind,
        queue_delay_us=queue_delay_us,
        precision=precision,
        version=version,
        force=force,
        top_k=top_k,
        labels=labels,
        ort_tensorrt=ort_tensorrt,
    )
    verb = "replaced" if result.replaced else "wrote"
    click.echo(
        f"{verb} version {result.version} of {', '.join(result.models)} ({result.backend} backend) in {result.repo}"
    )
    click.echo(f"serve it: deploykit serve {result.repo}")


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
def serve_cmd(
    repo: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    host: str,
    log_path: str | None,
    startup_timeout: float,
) -> None:
    """Serve REPO with a real Triton Inference Server until SIGINT/SIGTERM.

    Exit 0 stopped cleanly; 1 the server failed (a model did not load, it died: the reason and the log
    path in one line); 2 a bad repository; 3 no Triton server here.
    """
    import signal
    import threading

    from deploykit.serving.server import ServerError, TritonServer, check_repository

    server = TritonServer(repo, http_port, grpc_port, metrics_port, host, log_path)
    models = check_repository(repo, python_only=server.install.source == "nvidia-pytriton")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        took = server.wait_ready(startup_timeout)
        click.echo(
            f"serving {len(models)} models from {server.repo} ({server.install.source} tritonserver, "
            f"ready in {took:.1f} s): {', '.join(models)}"
        )
        click.echo(f"  HTTP    http://{server.http_url}")
        click.echo(f"  gRPC    {server.grpc_url}")
        click.echo(f"  metrics {server.metrics_url}")
        click.echo(f"  log     {server.log_path}")
        sys.stdout.flush()
        while not stop.is_set() and server.proc.poll() is None:
            stop.wait(0.5)
        if server.proc.poll() is not None:  # it ended before we asked it to
            rc = server.proc.returncode
            raise ServerError(f"tritonserver exited unexpectedly (rc={rc}): {server.reason()}")
        rc = server.stop()
        forced = " (exit timeout: connections were still open)" if rc == 1 else ""
        click.echo(f"stopped tritonserver (rc={rc}){forced}")
    finally:
        server.stop(signal.SIGKILL if not stop.is_set() else signal.SIGTERM)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
@click.option("--quiet", is_flag=True, help="No progress output.")
@_handle_errors
def bench_cmd(
    target: str,
    batch: str,
    runtime: str,
    threads: int | None,
    warmup: int,
    iters: int,
    json_out: str | None,
    plot_out: str | None,
    quiet: bool,
) -> None:
    """Latency of ARTIFACT (an export directory, or an .onnx / engine file in one) or of PRESET (exported
    into a temporary directory first) on PyTorch eager, ONNX Runtime FP32/FP16 and TensorRT, interleaved
    in one process: min/p50/p90/p99/mean ms, images/s, ratio to eager, GFLOP/s beside the MatMul ceiling."""
    from deploykit.workflows.bench import bench_command

    bench_command(
        target,
        batch=batch,
        runtime=runtime,
        threads=threads,
        warmup=warmup,
        iters=iters,
        json_out=json_out,
        plot_out=plot_out,
        quiet=quiet,
    )


def main() -> None:
    cli(prog_name="deploykit")


if __name__ == "__main__":
    main()
