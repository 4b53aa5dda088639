"""``deploykit serve``: start a real Triton Inference Server on a model repository and supervise it.

The server and the environment it needs come from :mod:`deploykit.serving.install` (a ``tritonserver`` on
``PATH``, else nvidia-pytriton's, whose Python backend this module copies to a temporary directory).
Triton hangs forever (never ready, never exits) when a Python stub dies before its handshake (a missing
``model.py``, a stub that cannot load its libraries); :func:`~deploykit.serving.checks.check_repository`
and a run of the stub catch those before the start, and the log is watched for them after it. The server
runs in its own process group so that stubs orphaned by a crash are killed with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from deploykit.core.errors import ConfigError, DeployKitError
from deploykit.core.processes import die_with_parent, remove_dead_folders
from deploykit.serving.install import ServerUnavailableError, find_server, server_env

#: log lines after which tritonserver never becomes ready and never exits on its own
HANG_PATTERNS = (
    re.compile(r"error while loading shared libraries"),
    re.compile(r"Failed to preinitialize Python stub"),
)
#: log lines that carry the reason a model (or the server) failed
REASON_PATTERNS = (
    re.compile(r"\[libprotobuf ERROR[^\]]*\]\s*(.*)"),
    re.compile(
        r'^E\d{4} [^\]]*\] "?((?:failed to load|Poll failed for model directory|Invalid argument).*?)"?$'
    ),
    re.compile(r'^E\d{4} [^\]]*\] "?(failed to start .*?)"?\s*$'),
    re.compile(r"^(error: creating server: .*)$"),
)
SHM_PREFIX = "triton_python_backend_shm_region_"


class ServerError(DeployKitError):
    """The server failed: a model did not load, it died, or it never became ready."""

    exit_code = 1


# -------------------------------------------------------------------------------------------- ports
def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------- server
class TritonServer:
    """One supervised ``tritonserver`` process (see the module doc)."""

    def __init__(
        self,
        repo: str | Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        exit_timeout_s: int = 5,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repo = Path(repo).resolve()
        self.host = host
        self.ports = check_ports({"http": http_port, "grpc": grpc_port, "metrics": metrics_port})
        #: default: tritonserver.log in a private folder made at start (never a predictable /tmp name)
        self.log_path: Path | None = Path(log_path) if log_path else None
        self.exit_timeout_s = exit_timeout_s
        self.extra_args = tuple(extra_args)
        self.install = find_server()
        self.proc: subprocess.Popen | None = None
        self.hang: str | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._shm_before: set[str] = set()
        self._pump: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"{self._client_host()}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host()}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host()}:{self.ports['metrics']}/metrics"

    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self, backend_dir: Path | None) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.repo}",
            f"--http-port={self.ports['http']}",
            f"--grpc-port={self.ports['grpc']}",
            f"--metrics-port={self.ports['metrics']}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            "--model-control-mode=none",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout_s}",
        ]
        if backend_dir is not None:
            cmd += [f"--backend-directory={backend_dir}", f"--cache-directory={self.install.caches}"]
            cmd += ["--allow-gpu-metrics=false"]
        return cmd + list(self.extra_args)

    def _backend_dir(self) -> Path | None:
        if self.install.source != "nvidia-pytriton":
            return None
        remove_dead_folders(Path(tempfile.gettempdir()), BACKEND_PREFIX)  # of serves that died
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{BACKEND_PREFIX}{os.getpid()}-")
        python = Path(self._tmp.name) / "backends" / "python"
        python.mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.install.backend_files / name, python / name)
        shutil.copy2(self.install.stub, python / "triton_python_backend_stub")
        return python.parent

    def start(self) -> None:
        for what, port in self.ports.items():
            if not port_free(self.host, port):
                raise ConfigError(f"port {port} (--{what}-port) is already in use on {self.host}")
        backend_dir = self._backend_dir()
        env = server_env(self.install)
        if backend_dir is not None:  # a stub that cannot start would make the server hang: try it first
            stub = backend_dir / "python" / "triton_python_backend_stub"
            probe = subprocess.run([str(stub)], env=env, capture_output=True, text=True)
            if (
                probe.returncode != 1
            ):  # a working stub run without arguments says "Expected 9 arguments", rc 1
                detail = (probe.stderr or probe.stdout).strip().splitlines()
                raise ServerUnavailableError(
                    f"the Python backend stub cannot run (rc={probe.returncode}): {detail[0] if detail else ''}"
                )
        _remove_orphaned_shm(set(), older_than_s=60)  # what a server killed with its supervisor left
        self._shm_before = _shm_regions()
        log = self._open_log()
        self.proc = subprocess.Popen(
            self.command(backend_dir),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the stubs inherit it and die with it
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a SIGKILLed `deploykit serve` takes it along
        )
        self._pump = threading.Thread(target=self._read_log, args=(log,), daemon=True)
        self._pump.start()

    def _open_log(self):
        """The log file, created without following a symlink: by default in a new private folder."""
        if self.log_path is None:
            self._log_dir = tempfile.mkdtemp(prefix=f"deploykit-triton-{os.getpid()}-log-")
            self.log_path = Path(self._log_dir) / "tritonserver.log"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(self.log_path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create the log file {self.log_path}: {exc.strerror}") from None
        return os.fdopen(fd, "wb")

    def _read_log(self, log) -> None:
        with log:
            for raw in self.proc.stdout:
                log.write(raw)
                log.flush()
                if self.hang is None:
                    line = raw.decode("utf-8", "replace")
                    if any(p.search(line) for p in HANG_PATTERNS):
                        self.hang = line.strip()

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until ``/v2/health/ready``; :class:`ServerError` with the log's reason otherwise."""
        t0 = time.monotonic()
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                self._join_log()
                raise ServerError(f"tritonserver exited (rc={self.proc.returncode}): {self.reason()}")
            if self.hang:
                self.stop(signal.SIGKILL)
                raise ServerError(f"a Python backend stub failed (Triton would hang): {self.hang}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    return time.monotonic() - t0
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s: {self.reason()}")

    def _join_log(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=5)

    def reason(self) -> str:
        """The most telling line of the log: the first model failure, else the last server error."""
        if self.log_path is None:
            return "no log (the server did not start)"
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "no log"
        found = []
        for line in lines:
            for pattern in REASON_PATTERNS:
                m = pattern.search(line.strip())
                if m:
                    found.append(m.group(1).strip().rstrip('"'))
                    break
        return (
            found[0] if found else (lines[-1].strip() if lines else "no output")
        ) + f" (log: {self.log_path})"

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the server (SIGTERM: Triton finishes in-flight requests), then kill what is left of its
        process group and remove shared-memory regions no process uses any more."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._join_log()
            _remove_orphaned_shm(self._shm_before)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return None if self.proc is None else self.proc.returncode


BACKEND_PREFIX = "deploykit-triton-backend-"


def check_ports(ports: dict[str, int]) -> dict[str, int]:
    """Ports Triton can bind and clients can find: 1..65535 (not 0: Triton would pick one and not say
    which), and three different ones."""
    for what, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"--{what}-port must be a port number in [1, 65535], got {port!r}")
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if port in seen:
            raise ConfigError(
                f"--{seen[port]}-port and --{what}-port are both {port}: each needs its own port"
            )
        seen[port] = what
    return ports


def _shm_regions() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(f"{SHM_PREFIX}*")} if shm.is_dir() else set()


def _remove_orphaned_shm(before: set[str], older_than_s: float = 0.0) -> None:
    """Remove the Python backend's shared-memory regions (not in ``before``) that no process maps any more;
    ``older_than_s``: only those untouched that long (a starting server may not have mapped its own yet)."""
    now = time.time()
    new = set()
    for name in _shm_regions() - before:
        with contextlib.suppress(OSError):
            if now - (Path("/dev/shm") / name).stat().st_mtime >= older_than_s:
                new.add(name)
    if not new:
        return
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            text = maps.read_text()
            mapped.update(n for n in new if n in text)
    for name in new - mapped:
        with contextlib.suppress(OSError):
            (Path("/dev/shm") / name).unlink()
