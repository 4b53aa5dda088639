"""Triton Inference Server: ``deploykit triton`` repositories (every config.pbtxt parsed with Triton's own
``ModelConfig`` protobuf) and a real ``tritonserver`` (from nvidia-pytriton) started by ``deploykit serve``:
concurrent load with dynamic batching, parity with ONNX Runtime, the classify ensemble against
``deploykit predict``, a server killed mid-load and restarted, and bad repositories.

Needs the ``[serve]`` extra (CI installs it); without it these tests skip with the reason.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deploykit.cli import cli
from deploykit.core.io import ordinary_mode, sha256_file

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient is not installed (pip install 'deploykit[serve]')",
)
from google.protobuf import text_format  # noqa: E402 - after the skip

ROOT = Path(__file__).resolve().parents[1]
LOAD_TEST = ROOT / "scripts" / "triton_load_test.py"
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the real photographs")
PHOTOS = [
    Path(skimage_data.data_dir) / f for f in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
]


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _parse(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def export(exported):
    return exported["hvt_s_4"]  # 128 px, FP32 + FP16, batch profile 1,1,32


@pytest.fixture(scope="module")
def repo(export, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    r = _cli(
        "triton", export.out_dir, "--repo", repo, "--max-batch", 8, "--instances", 1, "--queue-delay-us", 2000
    )
    assert r.exit_code == 0, r.output
    return repo


# -------------------------------------------------------------------------------------- repositories
def test_repository_layout_and_configs(export, repo):
    name = "hvt_s_4"
    models = sorted(p.name for p in repo.iterdir())
    assert models == [name, f"{name}_classify", f"{name}_postprocess", f"{name}_preprocess"]
    configs = {m: _parse(repo / m / "config.pbtxt") for m in models}  # every file is a valid ModelConfig
    main = configs[name]
    assert main.name == name and main.backend == "python" and main.max_batch_size == 8
    (inp,), (out,) = main.input, main.output
    assert (inp.name, list(inp.dims), model_config_pb2.DataType.Name(inp.data_type)) == (
        "input",
        [3, 128, 128],
        "TYPE_FP32",
    )
    assert (out.name, list(out.dims)) == ("logits", [1000])
    assert list(main.dynamic_batching.preferred_batch_size) == [8]
    assert main.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in main.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    ]
    assert (repo / name / "1" / "model.py").is_file()
    assert (
        sha256_file(repo / name / "1" / "model.onnx") == export.manifest["artifacts"]["model.onnx"]["sha256"]
    )
    assert stat_mode(repo / name / "1" / "model.onnx") == ordinary_mode()

    pre = configs[f"{name}_preprocess"]
    assert json.loads(pre.parameters["preprocessing"].string_value) == export.manifest["preprocessing"]
    assert model_config_pb2.DataType.Name(pre.input[0].data_type) == "TYPE_STRING"
    post = configs[f"{name}_postprocess"]
    assert [(o.name, list(o.dims)) for o in post.output] == [
        ("CLASSES", [5]),
        ("PROBS", [5]),
        ("LABELS", [5]),
    ]
    labels = json.loads((repo / f"{name}_postprocess" / "1" / "labels.json").read_text(encoding="utf-8"))
    assert len(labels) == 1000 and labels[285] == "Egyptian cat"
    ensemble = configs[f"{name}_classify"]
    assert ensemble.platform == "ensemble" and (repo / f"{name}_classify" / "1").is_dir()
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ensemble.ensemble_scheduling.step]
    assert [s[0] for s in steps] == [f"{name}_preprocess", name, f"{name}_postprocess"]
    assert steps[1][1] == {"input": "pixels"} and steps[1][2] == {"logits": "logits"}


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_onnxruntime_gpu_and_tensorrt_backends(export, tmp_path):
    repo = tmp_path / "repo"
    r = _cli("triton", export.out_dir, "--repo", repo, "--backend", "onnxruntime", "--kind", "gpu", "--ort-tensorrt",
             "--precision", "fp16", "--instances", 2)  # fmt: skip
    assert r.exit_code == 0, r.output
    main = _parse(repo / "hvt_s_4" / "config.pbtxt")
    assert main.platform == "onnxruntime_onnx" and main.max_batch_size == 32  # the export's profile maximum
    assert list(main.dynamic_batching.preferred_batch_size) == [32]
    assert [(g.kind, g.count) for g in main.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)
    ]
    (accelerator,) = main.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    fp16 = export.manifest["artifacts"]["model.fp16.onnx"]["sha256"]
    assert (
        sha256_file(repo / "hvt_s_4" / "1" / "model.onnx") == fp16
        and not (repo / "hvt_s_4" / "1" / "model.py").exists()
    )

    r = _cli("triton", export.out_dir, "--repo", tmp_path / "trt", "--backend", "tensorrt")
    assert r.exit_code == 2 and "engines are built on the target GPU" in r.output
    engine_dir = tmp_path / "with_engine"
    shutil.copytree(export.out_dir, engine_dir)
    (engine_dir / "model.engine").write_bytes(b"serialized engine")
    (engine_dir / "model.engine.json").write_text(json.dumps({"profile": {"max": [4, 3, 128, 128]}}))
    r = _cli("triton", engine_dir, "--repo", tmp_path / "trt", "--backend", "tensorrt", "--kind", "gpu")
    assert r.exit_code == 0, r.output
    plan = _parse(tmp_path / "trt" / "hvt_s_4" / "config.pbtxt")
    assert (
        plan.platform == "tensorrt_plan" and plan.max_batch_size == 4
    )  # the engine's profile, not the ONNX's
    assert (tmp_path / "trt" / "hvt_s_4" / "1" / "model.plan").read_bytes() == b"serialized engine"
    r = _cli("triton", engine_dir, "--repo", tmp_path / "trt2", "--backend", "tensorrt", "--max-batch", 8)
    assert r.exit_code == 2 and "--max-batch must be in 1..4" in r.output


def test_tensorrt_config_of_a_version_compatible_engine(export, tmp_path):
    from deploykit.serving.checks import server_args
    from deploykit.serving.choices import VERSION_COMPATIBLE_ARG

    engine_dir = tmp_path / "with_engine"
    shutil.copytree(export.out_dir, engine_dir)
    (engine_dir / "model.engine").write_bytes(b"serialized engine")
    sidecar = {"profile": {"max": [4, 3, 128, 128]}, "tensorrt": "10.3.0.26", "version_compatible": True}
    (engine_dir / "model.engine.json").write_text(json.dumps(sidecar))
    r = _cli("triton", engine_dir, "--repo", tmp_path / "vc", "--backend", "tensorrt", "--kind", "gpu")
    assert r.exit_code == 0, r.output
    assert VERSION_COMPATIBLE_ARG in r.output  # what another tritonserver must be started with
    plan = _parse(tmp_path / "vc" / "hvt_s_4" / "config.pbtxt")  # still a valid ModelConfig
    assert plan.platform == "tensorrt_plan" and plan.parameters["version_compatible"].string_value == "true"
    assert server_args(tmp_path / "vc") == (VERSION_COMPATIBLE_ARG,)  # deploykit serve passes it
    # an engine that is not version-compatible: no mark, no server option
    (engine_dir / "model.engine.json").write_text(json.dumps({**sidecar, "version_compatible": False}))
    assert _cli("triton", engine_dir, "--repo", tmp_path / "plain", "--backend", "tensorrt").exit_code == 0
    assert "version_compatible" not in _parse(tmp_path / "plain" / "hvt_s_4" / "config.pbtxt").parameters
    assert server_args(tmp_path / "plain") == ()


def test_versions_are_added_never_overwritten_silently(export, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    assert _cli("triton", export.out_dir, "--repo", repo, "--name", "m").exit_code == 0
    r = _cli("triton", export.out_dir, "--repo", repo, "--name", "m", "--top-k", 3)
    assert r.exit_code == 0 and "wrote version 2" in r.output
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1", "2"]
    assert list(_parse(repo / "m_classify" / "config.pbtxt").output[0].dims) == [3]
    r = _cli("triton", export.out_dir, "--repo", repo, "--name", "m", "--version", 1)
    assert (
        r.exit_code == 2
        and "version 1 of m, m_classify, m_postprocess, m_preprocess already exists" in r.output
    )
    before = (repo / "m" / "1" / "model.onnx").stat().st_ino
    r = _cli("triton", export.out_dir, "--repo", repo, "--name", "m", "--version", 1, "--force")
    assert r.exit_code == 0 and "replaced version 1" in r.output
    assert (repo / "m" / "1" / "model.onnx").stat().st_ino != before

    def broken_copy(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", broken_copy)
    from deploykit.core.errors import ArtifactError
    from deploykit.serving.repository import write_repository

    with pytest.raises(ArtifactError, match="No space left"):
        write_repository(export.out_dir, repo, name="m")
    assert not list(repo.glob("*/.deploykit-*")), "a failed write left a staging directory"
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1", "2"]


def test_bad_triton_inputs_are_one_line_exit_2(export, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(export.out_dir, corrupt)
    with open(corrupt / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    no_manifest = tmp_path / "no_manifest"
    no_manifest.mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    cases = [
        ((tmp_path / "missing",), "export directory not found"),
        ((no_manifest,), "has no manifest.json"),
        ((corrupt,), "does not match the sha256 in manifest.json"),
        ((export.out_dir, "--name", "bad name"), "may only hold letters"),
        ((export.out_dir, "--top-k", 0), "--top-k must be in 1..1000"),
        ((export.out_dir, "--instances", 0), "--instances must be at least 1"),
        ((export.out_dir, "--labels", labels), "2 labels given for a model with 1000 classes"),
        ((export.out_dir, "--ort-tensorrt"), "needs --backend onnxruntime --kind gpu"),
    ]
    for args, message in cases:
        r = _cli("triton", *args, "--repo", tmp_path / "repo")
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


# ------------------------------------------------------------------------------------ a real server
pytriton = pytest.importorskip(
    "pytriton", reason="nvidia-pytriton is not installed (pip install 'deploykit[serve]')"
)


def _ports() -> tuple[int, int, int]:
    from deploykit.serving.server import free_port

    return free_port(), free_port(), free_port()


class Serve:
    """``deploykit serve`` as users run it: a subprocess, stopped with SIGTERM."""

    def __init__(self, repo: Path, ports: tuple[int, int, int], log: Path) -> None:
        self.http, self.grpc, self.metrics = ports
        cmd = [sys.executable, "-m", "deploykit", "serve", str(repo), "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--log", str(log)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stdout.readline()  # "serving ..." once ready, "" if it exited

    def ready(self) -> bool:
        return self.banner.startswith("serving")

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    serve = Serve(repo, _ports(), tmp_path_factory.mktemp("log") / "triton.log")
    assert serve.ready(), serve.stop()
    yield serve
    rc, out, err = serve.stop()
    assert rc == 0 and "stopped tritonserver (rc=0)" in out, (rc, out, err)


def _load(server: Serve, *args, protocol: str = "http", timeout: float = 300) -> tuple[int, dict, str]:
    url = f"127.0.0.1:{server.http if protocol == 'http' else server.grpc}"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"load-{os.getpid()}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, str(LOAD_TEST), "--url", url, "--protocol", protocol, "--http-url", f"127.0.0.1:{server.http}",
           "--metrics-url", f"http://127.0.0.1:{server.metrics}/metrics", "--json", str(out), *map(str, args)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    return run.returncode, report, run.stdout + run.stderr


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_concurrent_load_batches_and_matches_onnxruntime(server, repo, protocol):
    onnx_file = repo / "hvt_s_4" / "1" / "model.onnx"
    rc, report, output = _load(
        server,
        "--model",
        "hvt_s_4",
        "--concurrency",
        8,
        "--requests",
        25,
        "--verify-onnx",
        onnx_file,
        protocol=protocol,
    )
    assert rc == 0, output
    assert report["ok"] == 200 and report["errors"] == 0
    assert report["max_abs_vs_onnxruntime"] <= 1e-5 and report["verified_requests"] == 200
    stats = report["server"]
    assert stats["inference_count"] == 200 and stats["requests_ok"] == 200
    assert stats["execution_count"] < stats["inference_count"], stats  # dynamic batching merged requests
    assert max(map(int, stats["batch_sizes_since_start"])) > 1
    assert 0 < report["p50_ms"] <= report["p99_ms"]


def test_served_answers_match_the_golden_reference(server, export, tmp_path):
    """--verify-reference: the export's stored images through the served model, every answer against the
    PyTorch FP32 outputs stored at export (no torch in the load test's checks); a reference whose outputs
    are not the model's fails with exit 1."""
    from deploykit.validation.reference import read_reference, reference_bytes

    reference = export.out_dir / "reference.npz"
    rc, report, output = _load(
        server, "--model", "hvt_s_4", "--concurrency", 4, "--requests", 4, "--batch", 2,
        "--verify-reference", reference,
    )  # fmt: skip
    assert rc == 0, output
    ref = report["reference"]
    assert ref["passed"] and ref["answers"] == 32 and ref["requests"] == 16, ref
    assert ref["max_abs"] < 1e-4 and ref["cosine_min"] > 0.99999
    assert "reference PASS: 32 answers" in output

    golden = read_reference(reference)
    wrong = tmp_path / "wrong.npz"
    wrong.write_bytes(
        reference_bytes(
            golden.images, golden.outputs[::-1].copy(), tolerances=golden.record["tolerances"],
            identity=golden.identity, names=golden.record["names"],
        )
    )  # fmt: skip
    rc, report, output = _load(
        server, "--model", "hvt_s_4", "--concurrency", 2, "--requests", 2, "--verify-reference", wrong
    )
    assert rc == 1 and not report["reference"]["passed"] and "reference failed: logits" in output, output
    rc, _, output = _load(
        server, "--model", "hvt_s_4_classify", "--requests", 1, "--verify-reference", reference
    )
    assert rc != 0 and "needs the tensor model" in output


def test_classify_ensemble_matches_deploykit_predict(server, export):
    import tritonclient.http as http

    from deploykit import load

    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    blobs = np.array([[p.read_bytes()] for p in PHOTOS], dtype=object)
    tensor = http.InferInput("IMAGE", list(blobs.shape), "BYTES")
    tensor.set_data_from_numpy(blobs)
    response = client.infer("hvt_s_4_classify", [tensor])
    classes, probs, labels = (response.as_numpy(n) for n in ("CLASSES", "PROBS", "LABELS"))
    expected = load(export.onnx_path).predict(PHOTOS, top_k=5)
    for row, want in enumerate(expected):
        assert list(classes[row]) == [t.cls for t in want.topk]
        assert [s.decode() for s in labels[row]] == [t.label for t in want.topk]
        np.testing.assert_allclose(probs[row], [t.prob for t in want.topk], rtol=1e-4, atol=1e-7)

    broken = http.InferInput("IMAGE", [1, 1], "BYTES")
    broken.set_data_from_numpy(np.array([[b"not an image"]], dtype=object))
    with pytest.raises(Exception, match="cannot decode image"):
        client.infer("hvt_s_4_classify", [broken])
    client.close()  # an idle keep-alive connection would hold the server's shutdown for its exit timeout


def _tritonserver_pid(serve: Serve) -> int:
    children = Path(f"/proc/{serve.proc.pid}/task/{serve.proc.pid}/children").read_text().split()
    for pid in children:
        if "tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return int(pid)
    raise AssertionError(f"no tritonserver child of {serve.proc.pid}: {children}")


def _successful_requests(serve: Serve, model: str) -> int:
    """Requests of ``model`` the server answered successfully (Triton's statistics extension)."""
    url = f"http://127.0.0.1:{serve.http}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.loads(response.read())
    return sum(int(v["inference_stats"]["success"]["count"]) for v in stats["model_stats"])


def _wait_for_successes(serve: Serve, load: subprocess.Popen, count: int, timeout_s: float = 120) -> None:
    """Poll the server until ``count`` requests succeeded; fail if the load test ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while (done := _successful_requests(serve, "hvt_s_4")) < count:
        assert load.poll() is None, f"the load test ended early: {load.communicate()[0]}"
        assert time.monotonic() < deadline, f"only {done} of {count} requests succeeded in {timeout_s} s"
        time.sleep(0.05)  # poll interval


def test_server_killed_mid_load_then_restarted(repo, tmp_path):
    ports = _ports()
    serve = Serve(repo, ports, tmp_path / "a.log")
    assert serve.ready(), serve.stop()
    url = f"127.0.0.1:{ports[0]}"
    cmd = [sys.executable, str(LOAD_TEST), "--url", url, "--model", "hvt_s_4", "--concurrency", "4", "--requests", "400",
           "--timeout", "10", "--metrics-url", "", "--json", str(tmp_path / "load.json")]  # fmt: skip
    load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # each client sends its next request only after the last one's response: once the server answered more
    # requests than there are clients, some client has received a response (the load test counts it "ok")
    _wait_for_successes(serve, load, count=4 + 1)
    os.kill(_tritonserver_pid(serve), signal.SIGKILL)
    output, _ = load.communicate(timeout=120)  # the clients do not hang
    report = json.loads((tmp_path / "load.json").read_text())
    assert load.returncode == 1 and report["ok"] > 0 and report["errors"] > 0, output
    assert any(
        re.search(r"closed|refused|Connection|unavailable", e, re.I) for e in report["error_samples"]
    ), report
    serve.proc.wait(timeout=30)  # deploykit serve notices on its own that the server died
    rc, out, err = serve.stop()
    assert rc == 1 and "tritonserver exited unexpectedly (rc=-9)" in err, (rc, out, err)
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1

    again = Serve(repo, ports, tmp_path / "b.log")  # the same ports are free again: nothing was left behind
    try:
        assert again.ready(), again.stop()
        rc, report, output = _load(again, "--model", "hvt_s_4", "--concurrency", 2, "--requests", 3)
        assert rc == 0 and report["ok"] == 6, output
    finally:
        assert again.stop()[0] == 0


def _serve_once(repo: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    http, grpc, metrics = _ports()
    cmd = [sys.executable, "-m", "deploykit", "serve", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics), "--log", str(tmp_path / "bad.log"), "--startup-timeout", "60"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("damage", "rc", "message"),
    [
        ("missing_onnx", 2, "1/model.onnx is missing"),
        ("missing_model_py", 2, "1/model.py is missing"),
        ("wrong_dims", 2, "input 'input' dims [3, 128, 129] do not match model.onnx [3, 128, 128]"),
        ("syntax", 2, 'has no field named "dimz"'),
        ("preferred_over_max", 1, "dynamic batching preferred size must be <= max batch size"),
    ],
)
def test_bad_repository_fails_serve_with_one_line(repo, tmp_path, damage, rc, message):
    bad = tmp_path / "repo"
    shutil.copytree(repo, bad)
    main = bad / "hvt_s_4"
    config = main / "config.pbtxt"
    if damage == "missing_onnx":
        (main / "1" / "model.onnx").unlink()
    elif damage == "missing_model_py":
        (main / "1" / "model.py").unlink()
    elif damage == "wrong_dims":
        config.write_text(config.read_text().replace("dims: [ 3, 128, 128 ]", "dims: [ 3, 128, 129 ]"))
    elif damage == "syntax":
        config.write_text(config.read_text().replace("dims: [ 1000 ]", "dimz: [ 1000 ]"))
    else:
        config.write_text(
            config.read_text().replace("preferred_batch_size: [ 8 ]", "preferred_batch_size: [ 64 ]")
        )
    run = _serve_once(bad, tmp_path)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == rc and len(errors) == 1 and message in errors[0], (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr
    if rc == 1:  # the server's own reason, and where its log is
        assert str(tmp_path / "bad.log") in errors[0]


def test_serve_refuses_backends_the_wheel_server_lacks(export, tmp_path):
    repo = tmp_path / "ort"
    assert _cli("triton", export.out_dir, "--repo", repo, "--backend", "onnxruntime").exit_code == 0
    run = _serve_once(repo, tmp_path)
    assert run.returncode == 2 and "has only the Python backend" in run.stderr, run.stderr


def test_serve_refuses_a_busy_port(repo, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli(
            "serve", repo, "--http-port", port, "--grpc-port", _ports()[1], "--metrics-port", _ports()[2]
        )
    assert r.exit_code == 2 and f"port {port} (--http-port) is already in use" in r.output
