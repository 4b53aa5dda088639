"""deploykit bench on the session's small HVT export: the JSON schema, consistent numbers, a real PNG, a p50
that agrees with an independent ONNX Runtime timing of the same file, and one-line errors (exit 2)."""

import json
import statistics
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from deploykit.cli import cli

THREADS = 2
SPEC_KEYS = {
    "runtime": str,
    "precision": str,
    "batch": int,
    "p50_ms": float,
    "p90_ms": float,
    "p99_ms": float,
    "mean_ms": float,
    "min_ms": float,
    "images_per_s": float,
    "gflops": float,
}


def invoke(*args):
    return CliRunner().invoke(cli, ["bench", *(str(a) for a in args)])


@pytest.fixture(scope="module")
def bench(exported, tmp_path_factory):
    """One CLI run on the HVT export (with --plot when matplotlib is installed)."""
    out = tmp_path_factory.mktemp("bench")
    export_dir = exported["hvt_s_4"].out_dir
    args = [export_dir, "--batch", "1,2", "--iters", "10", "--warmup", "2", "--threads", THREADS]
    args += ["--json", out / "bench.json", "--quiet"]
    try:
        import matplotlib  # noqa: F401

        args += ["--plot", out / "bench.png"]
    except ImportError:
        pass
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return {"result": r, "json": json.loads((out / "bench.json").read_text()), "out": out, "dir": export_dir}


def test_json_schema(bench):
    doc = bench["json"]
    assert {"results", "machine", "skipped"} <= set(doc)
    cases = {(r["runtime"], r["precision"], r["batch"]) for r in doc["results"]}
    runtimes = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")]
    # the INT8 files where the export has them (tests/test_int8_consumers.py benchmarks them), else skipped
    int8 = {"int8": "model.int8.onnx", "int8-cpu": "model.int8.cpu.onnx"}
    runtimes += [("onnxruntime", p) for p, name in int8.items() if (bench["dir"] / name).is_file()]
    expected = {(rt, p, b) for rt, p in runtimes for b in (1, 2)}
    assert cases == expected and len(doc["results"]) == len(expected)
    skipped = {s["precision"]: s["reason"] for s in doc["skipped"] if s["runtime"] == "onnxruntime"}
    assert skipped == {
        p: f"no {n} (export with --int8)" for p, n in int8.items() if ("onnxruntime", p) not in runtimes
    }
    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", **int8}
    for r in doc["results"]:
        for key, kind in SPEC_KEYS.items():
            assert isinstance(r[key], kind), (key, r)
        assert r["ratio_to_torch"] is None or isinstance(r["ratio_to_torch"], float)
        assert r["artifact"] == (None if r["runtime"] == "torch" else files[r["precision"]])
    # no TensorRT on this machine: skipped with the one-line reason, never faked
    trt = [s for s in doc["skipped"] if s["runtime"] == "tensorrt"]
    assert len(trt) == 1 and trt[0]["reason"] and "\n" not in trt[0]["reason"]
    assert "skipped tensorrt:" in bench["result"].output
    m = doc["machine"]
    assert m["threads"] == THREADS and m["cores"] >= 1 and m["cpu"] and m["torch"] and m["onnxruntime"]
    assert doc["model"]["preset"] == "hvt_s_4" and doc["model"]["input_shape"] == [3, 128, 128]


def test_numbers_are_consistent(bench):
    doc = bench["json"]
    per_image = doc["model"]["gflop_per_image"]
    assert per_image > 0
    torch_p50 = {r["batch"]: r["p50_ms"] for r in doc["results"] if r["runtime"] == "torch"}
    fp32_p50 = {r["batch"]: r["p50_ms"] for r in doc["results"] if r["artifact"] == "model.onnx"}
    for r in doc["results"]:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["mean_ms"] >= r["min_ms"]
        p50_s = r["p50_ms"] / 1e3
        assert r["images_per_s"] == pytest.approx(r["batch"] / p50_s, rel=1e-6)
        assert r["gflops"] == pytest.approx(per_image * r["batch"] / p50_s, rel=1e-6)
        assert r["ratio_to_torch"] == pytest.approx(r["p50_ms"] / torch_p50[r["batch"]], rel=1e-6)
        if r["runtime"] == "torch":
            assert r["ratio_to_fp32"] is None
        else:  # relative to ONNX Runtime's FP32 artifact at the same batch
            assert r["ratio_to_fp32"] == pytest.approx(r["p50_ms"] / fp32_p50[r["batch"]], rel=1e-6)
    assert "x fp32" in bench["result"].output


def test_plot_is_a_png(bench):
    pytest.importorskip("matplotlib")
    data = (bench["out"] / "bench.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_ort_p50_agrees_with_an_independent_timing(bench):
    """Not a speed target: the bench's ONNX Runtime FP32 batch-1 p50 is what a plain session measures."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(bench["dir"] / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    x = np.random.default_rng(1).standard_normal((1, 3, 128, 128), dtype=np.float32)
    for _ in range(3):
        session.run(None, {name: x})
    times = []
    for _ in range(20):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1e3)
    independent = statistics.median(times)
    ours = next(
        r["p50_ms"]
        for r in bench["json"]["results"]
        if (r["runtime"], r["precision"], r["batch"]) == ("onnxruntime", "fp32", 1)
    )
    assert independent / 2 <= ours <= independent * 2, (ours, independent)


def test_matmul_ceiling_is_plausible(bench):
    machine = bench["json"]["machine"]
    ceiling = machine["matmul_gflops_fp32"]
    assert ceiling > 0
    for r in bench["json"]["results"]:
        if r["runtime"] == "onnxruntime":
            assert r["gflops"] < 1.5 * ceiling, (r, ceiling)


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_preset_xyz"], "neither an export directory nor a preset"),
        (["{tmp}/missing/model.onnx"], "artifact not found"),
        (["{tmp}", "--batch", "0,x"], "--batch takes"),
        (["{tmp}", "--runtime", "foo"], "--runtime takes"),
        (["{tmp}", "--iters", "0"], "--iters must be at least 1"),
        (["{tmp}"], "no manifest.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = invoke(*(a.format(tmp=tmp_path) for a in args))
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_missing_weights_are_named(exported, tmp_path):
    manifest = json.loads((exported["hvt_s_4"].out_dir / "manifest.json").read_text())
    manifest["weights"] = {"path": str(tmp_path / "gone.pth"), "format": "deploykit"}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    r = invoke(tmp_path, "--quiet")
    assert r.exit_code == 2 and "gone.pth" in r.output and "--runtime" in r.output, r.output


def test_plot_without_matplotlib_fails_before_benchmarking(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    r = invoke("no_such_preset_xyz", "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "pip install 'deploykit[plot]'" in r.output, r.output
