"""``deploykit triton`` and ``deploykit serve``: write a model repository, serve one until a signal."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from deploykit.serving.repository import write_repository
from deploykit.serving.server import ServerError, TritonServer, check_repository


def triton_command(export_dir: str, repo: str, **options: Any) -> None:
    """Write the repository (options: those of :func:`~deploykit.serving.repository.write_repository`)
    and say what was written and how to serve it."""
    result = write_repository(export_dir, repo, **options)
    verb = "replaced" if result.replaced else "wrote"
    click.echo(
        f"{verb} version {result.version} of {', '.join(result.models)} ({result.backend} backend, "
        f"{result.artifact}) in {result.repo}"
    )
    click.echo(f"serve it: deploykit serve {result.repo}")


def serve_command(
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
    server = TritonServer(
        repo,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        host=host,
        log_path=log_path,
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
