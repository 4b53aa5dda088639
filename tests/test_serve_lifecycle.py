"""``deploykit serve`` leaves nothing behind: killed with SIGKILL, its tritonserver goes with it; an
interrupt during startup aborts at once; ports and log paths that cannot work are refused up front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.cli import cli

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install 'deploykit[serve]')")

from deploykit.serving.server import TritonServer, free_port  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from conftest import small_config
    from exporting import export_preset

    export = export_preset("hvt_ti_1", tmp_path_factory.mktemp("export"), small_config("hvt_ti_1", 64))
    repo = tmp_path_factory.mktemp("repo")
    r = CliRunner().invoke(cli, ["triton", str(export.out_dir), "--repo", str(repo)])
    assert r.exit_code == 0, r.output
    return repo


def tritonservers() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cmd.endswith(b"tritonserver") and state != "Z":
                found.add(int(entry.name))
    return found


def serve(repo: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deploykit", "serve", str(repo), "--http-port", str(free_port()),
           "--grpc-port", str(free_port()), "--metrics-port", str(free_port()), *extra]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigkill_of_serve_takes_tritonserver_along(repo):
    before = tritonservers()
    proc = serve(repo)
    assert proc.stdout.readline().startswith("serving"), proc.stderr.read()
    ours = tritonservers() - before
    assert ours, "tritonserver should be running"
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not (tritonservers() & ours), 10), "tritonserver outlived deploykit serve"


def test_sigint_during_startup_aborts_at_once(repo):
    before = tritonservers()
    proc = serve(repo, "--startup-timeout", "300")
    assert wait_until(lambda: tritonservers() - before, 60), "tritonserver never started"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 30  # not the 300 s startup timeout
    assert wait_until(lambda: not (tritonservers() - before), 10)


@pytest.mark.parametrize(
    "ports, message",
    [
        ((0, 8001, 8002), "--http-port must be a port number in [1, 65535], got 0"),
        ((70000, 8001, 8002), "--http-port must be a port number in [1, 65535], got 70000"),
        ((8500, 8500, 8002), "--http-port and --grpc-port are both 8500"),
    ],
)
def test_ports_that_cannot_work_are_refused(repo, ports, message):
    http, grpc, metrics = ports
    r = CliRunner().invoke(
        cli,
        ["serve", str(repo), "--http-port", http, "--grpc-port", grpc, "--metrics-port", metrics],
    )
    assert r.exit_code == 2 and message in r.output, r.output


def test_the_default_log_is_private_and_a_planted_symlink_is_not_followed(repo, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    planted = tmp_path / "log.txt"
    planted.symlink_to(victim)
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=planted
    )
    with pytest.raises(Exception, match="cannot create the log file"):
        server._open_log()
    assert victim.read_text() == "someone else's file"
    default = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with default._open_log():
        pass
    folder = default.log_path.parent
    assert folder.name.startswith(f"deploykit-triton-{os.getpid()}-log-")
    assert (folder.stat().st_mode & 0o777) == 0o700 and (default.log_path.stat().st_mode & 0o777) == 0o600


def test_bad_images_are_the_clients_fault_and_fail_only_their_own_requests(repo):
    import concurrent.futures

    import numpy as np
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    from deploykit.validation.inputs import PHOTOS

    photos = Path(__file__).resolve().parents[1] / "deploykit" / "data" / "photos"
    good = [(photos / f"{name}.jpg").read_bytes() for name in PHOTOS[:4]]
    bad = [b"", b"\x00\x01random bytes", good[0][: len(good[0]) // 3]]  # empty, random, truncated JPEG
    proc = serve(repo)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving"), proc.stderr.read()
        port = next(ln for ln in iter(proc.stdout.readline, "") if "HTTP" in ln).rsplit(":", 1)[1].strip()

        def classify(blob: bytes):
            client = http.InferenceServerClient(f"127.0.0.1:{port}")
            tensor = http.InferInput("IMAGE", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[blob]], dtype=object))
            try:
                return client.infer("hvt_ti_1_classify", [tensor]).as_numpy("CLASSES")
            except InferenceServerException as exc:
                return exc
            finally:
                client.close()

        blobs = [b for pair in zip(good, bad + [good[-1]]) for b in pair]  # interleaved: merged batches
        with concurrent.futures.ThreadPoolExecutor(len(blobs)) as pool:
            answers = list(pool.map(classify, blobs))
        for blob, answer in zip(blobs, answers):
            if blob in bad:
                assert isinstance(answer, InferenceServerException), answer
                assert answer.status() == "400" and "0x" not in answer.message(), answer
            else:
                assert not isinstance(answer, Exception) and answer.shape == (1, 5), answer
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
