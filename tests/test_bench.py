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


# ------------------------------------------------------------------------- on a device: the truth
def test_flops_counted_on_the_graph_are_torch_flop_counter_s(exported):
    """bench counts the FLOPs on the export's ONNX graph (a device has no torch): the total
    torch.utils.flop_counter gives on the eager model, for every family — exactly, but for ConViT, whose
    export folds the gated positional attention's projection of the fixed relative positions into a
    constant (2 x N^2 x 3 x heads per block: 0.03 % of convit_tiny at 64 px)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from deploykit.workflows.bench.flops import onnx_flops
    from deploykit.workflows.bench.run import _eager_model

    counts = {}
    for name, result in exported.items():
        model = _eager_model(result.out_dir, False)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *model.input_size))
        counts[name] = (onnx_flops(result.out_dir / "model.onnx"), counter.get_total_flops())
    folded = {name: torch_count - graph for name, (graph, torch_count) in counts.items()}
    assert all(graph for graph, _ in counts.values()), counts
    assert {name: n for name, n in folded.items() if n} == {"convit_tiny": folded["convit_tiny"]}, counts
    graph, torch_count = counts["convit_tiny"]
    assert 0 < torch_count - graph <= 1e-3 * torch_count, counts


def test_bench_without_torch_runs_the_onnx_files(exported, tmp_path, monkeypatch):
    """A device install: eager PyTorch is skipped with the line naming [export], the ONNX files run, the
    input size comes from the manifest and the FLOPs from the graph; a preset name needs PyTorch."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    export_dir = exported["hvt_s_4"].out_dir
    args = ["--batch", "1", "--iters", "2", "--warmup", "0", "--threads", THREADS, "--quiet"]
    r = invoke(export_dir, *args, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    skipped = [s["reason"] for s in doc["skipped"] if s["runtime"] == "torch"]
    assert skipped == ["PyTorch is not installed here: pip install 'deploykit[export]'"], doc["skipped"]
    assert {r["runtime"] for r in doc["results"]} == {"onnxruntime"}
    assert doc["model"]["input_shape"] == [3, 128, 128] and doc["model"]["gflop_per_image"] > 0
    preset = invoke("hvt_ti_1", "--quiet")
    assert preset.exit_code == 2 and len(preset.output.strip().splitlines()) == 1, preset.output
    assert "needs PyTorch: pip install 'deploykit[export]'" in preset.output


def test_onnxruntime_rows_name_the_provider_that_ran(exported, monkeypatch):
    """CUDA asked for first, the CPU ran (no GPU here): the row and the table say CPU."""
    from deploykit.runtime import ort_runner
    from deploykit.workflows.bench import run_bench
    from deploykit.workflows.bench.report import format_table

    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort_runner, "default_providers", lambda tensorrt=False: list(asked))
    report = run_bench(
        exported["hvt_s_4"].out_dir, batches=(1,), runtimes="onnxruntime", threads=THREADS, iters=2, warmup=0
    )
    assert report.machine["onnxruntime_providers"] == asked
    assert {r.provider for r in report.results} == {"CPUExecutionProvider"}
    assert all(r.to_dict()["provider"] == "CPUExecutionProvider" for r in report.results)
    rows = format_table(report).columns[0]._cells
    assert set(rows) == {"onnxruntime (CPU)"}, rows


def _engine_export(directory):
    """An export directory holding only a (fake) TensorRT engine and its manifest: what a device keeps."""
    from fakes import fake_engine_file

    directory.mkdir()
    fake_engine_file(directory)
    io = {
        "inputs": [{"name": "input", "dtype": "float", "shape": ["batch", 3, 4, 4]}],
        "outputs": [{"name": "logits", "dtype": "float", "shape": ["batch", 5]}],
    }
    preprocessing = {
        "input_size": [3, 4, 4],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "interpolation": "bilinear",
    }
    manifest = {"preset": "hvt_ti_1", "io": io, "export_config": {"batch": {"min": 1, "opt": 1, "max": 8}}}
    manifest |= {"artifacts": {}, "preprocessing": preprocessing}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_engine_rows_time_the_gpu_apart_from_the_host_and_a_jetson_names_its_clocks(tmp_path, monkeypatch):
    """TensorRT rows: host end to end and the GPU compute alone (CUDA events); on a Jetson the power mode
    and clocks are in the machine record and unlocked clocks are one warning line. Fakes of TensorRT,
    cuda-python and the Jetson's facts (no GPU here)."""
    from fakes import install_fakes

    from deploykit.engine import device

    install_fakes(monkeypatch, "10.3.0.26")
    facts = device.JetsonFacts(
        model="NVIDIA Jetson AGX Orin Developer Kit",
        l4t="36.4.3",
        jetpack="6.2",
        power_mode="MAXN",
        power_mode_id=0,
        clocks_locked=False,
        clocks="CPU 0/12 locked, GPU 0/1 locked (sudo jetson_clocks locks them)",
    )
    monkeypatch.setattr(device, "jetson_facts", lambda *args, **kwargs: facts)
    directory = _engine_export(tmp_path / "export")
    args = ["--runtime", "tensorrt", "--batch", "1,2", "--iters", "3", "--warmup", "1", "--threads", THREADS]
    r = invoke(directory, *args, "--json", tmp_path / "b.json", "--quiet")
    assert r.exit_code == 0, r.output
    warning = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "clocks are not locked" in warning[0] and "MAXN" in warning[0], r.output
    assert "GPU p50 ms" in r.output and "NOT locked" in r.output, r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    assert [(x["runtime"], x["batch"]) for x in doc["results"]] == [("tensorrt", 1), ("tensorrt", 2)]
    for row in doc["results"]:
        gpu = row["gpu_ms"]
        assert gpu and 0 <= gpu["min_ms"] <= gpu["p50_ms"] <= gpu["p99_ms"], row
        assert gpu["p50_ms"] <= row["p50_ms"], row  # the engine's compute is inside the host's time
        assert row["gflops"] is None and row["provider"] is None  # no ONNX graph here to count on
    assert doc["model"]["gflop_per_image"] is None
    assert doc["machine"]["gpu"]["name"] == "Fake Orin"
    assert (
        doc["machine"]["jetson"]["power_mode"] == "MAXN"
        and doc["machine"]["jetson"]["clocks_locked"] is False
    )
    assert "gpu" in doc["settings"]["timing"] and "host" in doc["settings"]["timing"]


def test_tensorrt_runner_times_the_engine_between_the_copies(tmp_path, monkeypatch):
    """``run_timed``: the same logits as ``run``, and CUDA events recorded after the copy in and before the
    copy out, on the runner's stream; created once, destroyed with the runner."""
    import gc

    from fakes import expected_logits, fake_engine_file, install_fakes

    from deploykit.engine.runner import TensorRTRunner

    _, cudart = install_fakes(monkeypatch, "11.4.0.106")
    runner = TensorRTRunner(fake_engine_file(tmp_path, "11.4.0.106"))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4), dtype=np.float32)
    for _ in range(2):
        cudart.calls.clear()
        out, gpu_ms = runner.run_timed(x)
        np.testing.assert_allclose(out, expected_logits(x), rtol=1e-6)
        assert isinstance(gpu_ms, float) and gpu_ms >= 0
        sequence = [c[0] if c[0] != "cudaMemcpyAsync" else c[1] for c in cudart.calls]
        sequence = [name for name in sequence if name not in ("cudaMalloc", "cudaEventCreate")]
        assert sequence == [
            "cudaMemcpyHostToDevice",
            "cudaEventRecord",
            "cudaEventRecord",
            "cudaMemcpyDeviceToHost",
            "cudaStreamSynchronize",
            "cudaEventElapsedTime",
        ], cudart.calls
        assert {c[1] for c in cudart.calls if c[0] == "cudaEventRecord"} == {runner._stream}
    del runner
    gc.collect()
    names = [c[0] for c in cudart.calls]
    assert names.count("cudaEventDestroy") == 2, cudart.calls
