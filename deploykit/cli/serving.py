"""``deploykit triton`` and ``deploykit serve``: write a model repository; serve one with a real Triton
server, supervised, until a signal (the supervisor prints the endpoints and how the server ended)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from deploykit.cli.app import cli, handle_errors
from deploykit.core.artifacts import Precision
from deploykit.serving.choices import Backend, InstanceKind


@cli.command("triton")
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option(
    "--repo", required=True, type=click.Path(file_okay=False), help="Model repository to write into."
)
@click.option("--name", help="Model name (default: the preset, e.g. hvt_ti_1).")
@click.option(
    "--backend",
    type=click.Choice([b.value for b in Backend]),
    default=Backend.PYTHON.value,
    show_default=True,
    help="python: model.py runs the ONNX with ONNX Runtime (any CPU Triton, e.g. nvidia-pytriton's).",
)
@click.option(
    "--precision",
    type=click.Choice([p.value for p in Precision]),
    default=Precision.FP32.value,
    show_default=True,
    help="int8: model.int8.cpu.onnx on ONNX Runtime, model.int8.engine on the tensorrt backend.",
)
@click.option("--max-batch", type=int, help="max_batch_size (default: the export's batch profile maximum).")
@click.option(
    "--instances", type=int, default=1, show_default=True, help="Instances of the model (instance_group)."
)
@click.option(
    "--kind",
    type=click.Choice([k.value for k in InstanceKind]),
    default=InstanceKind.CPU.value,
    show_default=True,
)
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
@handle_errors
def triton_cmd(export_dir: str, repo: str, **options: Any) -> None:
    """Write a Triton model repository for EXPORT_DIR: NAME, NAME_preprocess, NAME_postprocess and the
    ensemble NAME_classify (image bytes in, top-k classes out)."""
    from deploykit.serving.repository import write_repository

    result = write_repository(export_dir, repo, **options)
    verb = "replaced" if result.replaced else "wrote"
    click.echo(
        f"{verb} version {result.version} of {', '.join(result.models)} ({result.backend} backend, "
        f"{result.artifact}) in {result.repo}"
    )
    click.echo(f"serve it: deploykit serve {result.repo}")
    if result.server_args:  # a version-compatible plan: Triton loads it only with this server option
        click.echo(
            f"  (another tritonserver needs: {' '.join(result.server_args)}; deploykit serve passes it)"
        )


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
@handle_errors
def serve_cmd(repo: str, **options: Any) -> None:
    """Serve REPO with a real Triton Inference Server until SIGINT/SIGTERM.

    Exit 0 stopped cleanly; 1 the server failed (a model did not load, it died: the reason and the log
    path in one line); 2 a bad repository; 3 no Triton server here.
    """
    serve(repo, **options)


def serve(
    repo: str,
    *,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    host: str = "127.0.0.1",
    log_path: str | None = None,
    startup_timeout: float = 120.0,
) -> None:
    """Check ``repo``, start tritonserver, wait until it is ready, print its endpoints, and serve until
    SIGINT/SIGTERM (or until the server dies: :class:`ServerError` with its reason)."""
    from deploykit.serving.checks import check_repository, server_args
    from deploykit.serving.server import ServerError, TritonServer

    server = TritonServer(
        repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        log_path=log_path,
        extra_args=server_args(repo),  # version-compatible plans: the TensorRT backend's server option
    )
    models = check_repository(repo, python_only=server.install.source == "nvidia-pytriton")
    stop = threading.Event()
    previous: dict = {}
    try:
        server.start()  # an interrupt while it starts aborts at once (exit 130/143) and kills it
        took = server.wait_ready(startup_timeout)
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
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
