"""The consumers of an export's INT8 files (issue 18): ``model.int8.onnx`` (explicit Q/DQ, the graph TensorRT
builds its INT8 engine from) and ``model.int8.cpu.onnx`` (ONNX Runtime dynamic quantization, the CPU
artifact) in ``deploykit predict`` / ``deploykit.load``, ``inspect``, ``bench`` and ``triton`` (and a real
Triton server where nvidia-pytriton is installed).

The export is the trained reference ConViT (``tests/data/reference/convit.safetensors``, digits 0-9,
``scripts/train_reference.py``): a random-weight model's logits are nearly flat, so "INT8 agrees with FP32"
would prove nothing on it. The INT8 files are made here the way the export makes them (ONNX Runtime's
``quantize_dynamic`` of the FP32 graph's MatMul/Gemm weights; ``quantize_static`` in QDQ format, calibrated
on the digits calibration split), with model.onnx's metadata copied over verbatim (so
``deploykit.precision`` says ``fp32``: the consumers must tell INT8 from the operators) and recorded in
manifest.json with their sha256 as the export records its files.
"""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from deploykit import load
from deploykit.cli import cli
from deploykit.core.artifacts import Variant, quantized_variant
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.record import variant_of

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "reference" / "convit.safetensors"
DIGITS = ROOT / "tests" / "data" / "digits"
#: 5 held-out images of each digit (never trained on), sorted: the same images every run
HELDOUT = [p for d in sorted((DIGITS / "heldout").iterdir()) for p in sorted(d.glob("*.png"))[:5]]
INT8 = ("model.int8.onnx", "model.int8.cpu.onnx")


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _with_metadata(path: Path, source: onnx.ModelProto) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    onnx.save(proto, str(path))


def _quantize(directory: Path) -> None:
    """model.int8.cpu.onnx and model.int8.onnx beside model.onnx, with its metadata, in the manifest."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from deploykit.runtime.preprocess import Preprocessing

    fp32 = directory / "model.onnx"
    source = onnx.load(str(fp32), load_external_data=False)
    cpu = directory / "model.int8.cpu.onnx"
    quantize_dynamic(fp32, cpu, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    manifest = json.loads((directory / "manifest.json").read_text())
    preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
    calib = [p for d in sorted((DIGITS / "calib").iterdir()) for p in sorted(d.glob("*.png"))[:2]]
    batches = [preprocessing(calib[i : i + 4]) for i in range(0, len(calib), 4)]
    input_name = source.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    qdq = directory / "model.int8.onnx"
    quantize_static(fp32, qdq, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])  # fmt: skip
    for path in (cpu, qdq):
        _with_metadata(path, source)
        manifest["artifacts"][path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """The reference ConViT exported (FP32 + FP16) through the real pipeline, plus the two INT8 files."""
    from exporting import export_preset

    assert REFERENCE.is_file(), f"{REFERENCE} is missing (python scripts/train_reference.py writes it)"
    out = tmp_path_factory.mktemp("int8") / "convit"
    export_preset("convit_tiny", out, weights=REFERENCE, fp16=True)
    _quantize(out)
    return out


# ------------------------------------------------------------------------------------------- variants
def test_variant_by_file_name():
    names = {"model.onnx": "fp32", "model.fp16.onnx": "fp16", "model.int8.onnx": "int8"}
    names |= {"model.int8.cpu.onnx": "int8-cpu", "x/convit.int8.cpu.onnx": "int8-cpu", "other.onnx": None}
    assert {name: Variant.from_file_name(name) for name in names} == names
    assert [Variant(v).precision for v in ("fp32", "fp16", "int8", "int8-cpu")] == [
        "fp32",
        "fp16",
        "int8",
        "int8",
    ]


def test_variant_by_operators():
    assert quantized_variant(["MatMul", "Add"]) is None
    assert quantized_variant(["QuantizeLinear", "DequantizeLinear", "MatMul"]) == "int8"
    for op in (
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "QLinearConv",
    ):
        assert quantized_variant(["Add", op]) == "int8-cpu", op
    # ONNX Runtime's integer kernels win over Q/DQ: such a graph is not one TensorRT parses
    assert quantized_variant(["DequantizeLinear", "MatMulInteger"]) == "int8-cpu"


def test_graph_variant_reads_the_operators_not_the_copied_metadata(export, tmp_path):
    want = {"model.onnx": "fp32", "model.fp16.onnx": "fp16", "model.int8.onnx": "int8"}
    want["model.int8.cpu.onnx"] = "int8-cpu"
    for name, variant in want.items():
        proto = onnx.load(str(export / name), load_external_data=False)
        if name in INT8:  # the FP32 graph's metadata, as the quantizer keeps it
            assert {p.key: p.value for p in proto.metadata_props}["deploykit.precision"] == "fp32"
        assert variant_of(export / name, proto=proto) == variant, name
    renamed = tmp_path / "model.onnx"  # e.g. the copy a Triton repository serves
    shutil.copyfile(export / "model.int8.cpu.onnx", renamed)
    assert variant_of(renamed, proto=onnx.load(str(renamed))) == "int8-cpu"


# -------------------------------------------------------------------------------------------- predict
def test_int8_artifacts_predict_the_fp32_classes(export):
    fp32 = load(export / "model.onnx").predict(HELDOUT, top_k=3)
    top = [p.topk[0].label for p in fp32]
    truth = [p.parent.name for p in HELDOUT]
    assert sum(a == b for a, b in zip(top, truth)) >= 0.9 * len(HELDOUT)  # a trained model: it predicts
    assert load(export / "model.onnx").variant == "fp32"
    for name, variant in (("model.int8.onnx", "int8"), ("model.int8.cpu.onnx", "int8-cpu")):
        predictor = load(export / name)
        assert (predictor.variant, predictor.precision) == (variant, "int8")
        assert list(predictor.labels) == [str(i) for i in range(10)]  # from the copied metadata
        assert list(predictor.preprocessing.input_size) == [3, 64, 64]
        ours = predictor.predict(HELDOUT, top_k=3)
        assert [p.topk[0].label for p in ours] == top, name
        assert [p.topk[0].cls for p in ours] == [p.topk[0].cls for p in fp32], name
        # quantized, not the FP32 graph under another name: the probabilities move a little, not a lot
        diff = max(abs(a.topk[0].prob - b.topk[0].prob) for a, b in zip(ours, fp32))
        assert 0 < diff < 0.1, (name, diff)


def test_predict_cli_shows_int8_and_writes_the_fp32_top1(export, tmp_path):
    images = HELDOUT[::5]  # one of each digit
    want = [p.topk[0].label for p in load(export / "model.onnx").predict(images)]
    for name, variant in (("model.int8.cpu.onnx", "int8-cpu"), ("model.int8.onnx", "int8")):
        out = tmp_path / f"{name}.json"
        r = _cli("predict", export / name, *images, "--top-k", 2, "--json", out)
        assert r.exit_code == 0, r.output
        assert f", {variant})" in r.output  # the table's title: runner and variant
        data = json.loads(out.read_text())
        assert [d["topk"][0]["label"] for d in data] == want
        assert "random weights" not in r.output


def test_without_onnx_the_variant_comes_from_the_name_or_the_record(export, tmp_path, monkeypatch):
    """The device runtime has no onnx package: the file name, else the recorded precision, says it."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert variant_of(export / "model.int8.cpu.onnx", meta={"deploykit.precision": "fp32"}) == "int8-cpu"
    assert variant_of(export / "model.int8.onnx", meta={"deploykit.precision": "fp32"}) == "int8"
    assert variant_of(tmp_path / "served.onnx", meta={"deploykit.precision": "int8-cpu"}) == "int8-cpu"
    assert variant_of(tmp_path / "model.onnx", meta={}) == "fp32"


def test_inspect_says_int8(export, tmp_path):
    for name, variant in (("model.int8.onnx", "int8"), ("model.int8.cpu.onnx", "int8-cpu")):
        out = tmp_path / f"{name}.json"
        r = _cli("inspect", export / name, "--json", out)
        assert r.exit_code == 0, r.output
        assert f"precision: {variant} (" in r.output
        facts = json.loads(out.read_text())
        assert (facts["precision"], facts["variant"]) == ("int8", variant)
    r = _cli("inspect", export / "model.fp16.onnx")
    assert "precision: fp16 (" in r.output


# ---------------------------------------------------------------------------------------------- bench
@pytest.fixture(scope="module")
def bench(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    r = _cli("bench", export, "--runtime", "onnxruntime", "--batch", "1,2", "--iters", 6, "--warmup", 1,
             "--threads", 2, "--json", out, "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    return r.output, json.loads(out.read_text())


def test_bench_measures_both_int8_files_beside_fp32(bench):
    output, doc = bench
    rows = {(r["precision"], r["batch"]): r for r in doc["results"] if r["runtime"] == "onnxruntime"}
    variants = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    variants["int8-cpu"] = "model.int8.cpu.onnx"
    assert set(rows) == {(p, b) for p in variants for b in (1, 2)}
    assert not [s for s in doc["skipped"] if s["runtime"] == "onnxruntime"]
    for (precision, batch), row in rows.items():
        assert row["artifact"] == variants[precision]
        fp32 = rows["fp32", batch]["p50_ms"]
        assert row["ratio_to_fp32"] == pytest.approx(row["p50_ms"] / fp32, rel=1e-9)
        assert row["ratio_to_torch"] is None  # torch was not asked for
    # the order of the rows: per batch fp32, fp16, int8 (Q/DQ), int8-cpu
    order = [r["precision"] for r in doc["results"] if r["batch"] == 1]
    assert order == ["fp32", "fp16", "int8", "int8-cpu"]
    assert (
        doc["machine"]["matmul_gflops_int8"] > 0
    )  # the integer MatMul ceiling the int8 rows are set against
    int8_rows = [r for r in doc["results"] if r["precision"].startswith("int8")]
    ceiling = doc["machine"]["matmul_gflops_int8"]
    assert all(r["pct_of_matmul_ceiling"] == pytest.approx(100 * r["gflops"] / ceiling) for r in int8_rows)
    # the table: both INT8 rows labelled, the ratio column, and what each INT8 file is
    assert "int8 Q/DQ (TRT graph)" in output and "int8 dynamic (CPU)" in output and "x fp32" in output
    assert "model.int8.onnx, the graph TensorRT builds its INT8 engine from" in output
    table = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if "│" in line]
    labels = {"int8": "int8 Q/DQ (TRT graph)", "int8-cpu": "int8 dynamic (CPU)"}
    for row in int8_rows:  # the ratio the table prints for that row
        (cells,) = [c for c in table if c[1] == labels[row["precision"]] and c[2] == str(row["batch"])]
        assert cells[10] == f"{row['ratio_to_fp32']:.2f}", cells  # the "x fp32" column


def test_bench_lists_missing_int8_files_as_skipped(export, tmp_path):
    partial = tmp_path / "fp32_only"
    shutil.copytree(export, partial)
    for name in (*INT8, "model.fp16.onnx"):
        (partial / name).unlink()
    from deploykit.workflows.bench import run_bench

    report = run_bench(partial, batches=(1,), runtimes=("onnxruntime",), threads=1, warmup=0, iters=1,
                       settle_ms=0)  # fmt: skip
    assert [r.precision for r in report.results] == ["fp32"]
    skipped = {s["precision"]: s["reason"] for s in report.skipped if s["runtime"] == "onnxruntime"}
    assert skipped == {
        "fp16": "no model.fp16.onnx (export with --fp16)",
        "int8": "no model.int8.onnx (export with --int8)",
        "int8-cpu": "no model.int8.cpu.onnx (export with --int8)",
    }


def test_int8_matmul_ceiling():
    from deploykit.workflows.bench.measure import matmul_ceiling

    assert matmul_ceiling(1, "int8", size=256, seconds=0.05) > 0
    assert matmul_ceiling(1, "int8-cpu", size=256, seconds=0.05) > 0  # the same probe
    assert matmul_ceiling(1, "fp8", size=256, seconds=0.05) is None


# --------------------------------------------------------------------------------------------- triton
def _parse(path: Path):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs [serve]")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()), model_config_pb2


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
def test_triton_serves_the_int8_cpu_artifact(export, tmp_path, backend):
    from deploykit.serving.checks import check_repository
    from deploykit.serving.repository import write_repository

    repo = tmp_path / "repo"
    result = write_repository(export, repo, backend=backend, precision="int8", max_batch=8)
    assert result.artifact == "model.int8.cpu.onnx"
    main, pb2 = _parse(repo / "convit_tiny" / "config.pbtxt")
    served = repo / "convit_tiny" / "1" / "model.onnx"
    manifest = json.loads((export / "manifest.json").read_text())
    assert _sha256(served) == manifest["artifacts"]["model.int8.cpu.onnx"]["sha256"]
    assert variant_of(served, proto=onnx.load(str(served))) == "int8-cpu"
    (inp,), (out,) = main.input, main.output
    assert [(t.name, list(t.dims), pb2.DataType.Name(t.data_type)) for t in (inp, out)] == [
        ("input", [3, 64, 64], "TYPE_FP32"),
        ("logits", [10], "TYPE_FP32"),
    ]
    assert main.max_batch_size == 8
    assert (main.backend, main.platform) == (
        ("python", "") if backend == "python" else ("", "onnxruntime_onnx")
    )
    pre, _ = _parse(repo / "convit_tiny_preprocess" / "config.pbtxt")
    post, _ = _parse(repo / "convit_tiny_postprocess" / "config.pbtxt")
    assert (
        pb2.DataType.Name(pre.output[0].data_type)
        == pb2.DataType.Name(post.input[0].data_type)
        == "TYPE_FP32"
    )
    labels = json.loads((repo / "convit_tiny_postprocess" / "1" / "labels.json").read_text())
    assert labels == [str(i) for i in range(10)]
    # serve's own checks: configs parse, the served ONNX's names, dims and types are the config's
    assert check_repository(repo) == sorted(result.models)


def test_triton_int8_refusals_and_the_engine(export, tmp_path):
    from deploykit.serving.repository import write_repository

    with pytest.raises(ConfigError, match="--ort-tensorrt takes fp32 or fp16"):
        write_repository(export, tmp_path / "r1", backend="onnxruntime", kind="gpu", precision="int8",
                         ort_tensorrt=True)  # fmt: skip
    with pytest.raises(ArtifactError, match=r"deploykit build .*model\.int8\.onnx"):
        write_repository(export, tmp_path / "r2", backend="tensorrt", precision="int8")
    with pytest.raises(ConfigError, match="--precision must be one of fp32, fp16, int8"):
        write_repository(export, tmp_path / "r3", precision="int4")

    partial = tmp_path / "no_int8"
    shutil.copytree(export, partial)
    (partial / "model.int8.cpu.onnx").unlink()
    with pytest.raises(
        ArtifactError, match=r"model\.int8\.cpu\.onnx not found in the export \(export with --int8\)"
    ):
        write_repository(partial, tmp_path / "r4", precision="int8")

    swapped = tmp_path / "swapped"  # the CPU artifact must be the file the manifest recorded
    shutil.copytree(export, swapped)
    shutil.copyfile(export / "model.int8.onnx", swapped / "model.int8.cpu.onnx")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        write_repository(swapped, tmp_path / "r5", precision="int8")

    # an INT8 engine (deploykit build model.int8.onnx names it model.int8.engine; its sidecar says int8)
    engine_dir = tmp_path / "with_engine"
    shutil.copytree(export, engine_dir)
    (engine_dir / "model.int8.engine").write_bytes(b"int8 engine")
    sidecar = {"precision": "int8", "profile": {"max": [4, 3, 64, 64]}}
    (engine_dir / "model.int8.engine.json").write_text(json.dumps(sidecar))
    result = write_repository(engine_dir, tmp_path / "trt", backend="tensorrt", kind="gpu", precision="int8")
    assert result.artifact == "model.int8.engine"
    plan, _ = _parse(tmp_path / "trt" / "convit_tiny" / "config.pbtxt")
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 4
    assert (tmp_path / "trt" / "convit_tiny" / "1" / "model.plan").read_bytes() == b"int8 engine"


def test_triton_refuses_an_int8_cpu_artifact_with_other_io(export, tmp_path):
    from deploykit.serving.repository import write_repository

    renamed = tmp_path / "renamed"
    shutil.copytree(export, renamed)
    proto = onnx.load(str(renamed / "model.int8.cpu.onnx"))
    for node in proto.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    proto.graph.output[0].name = "scores"
    onnx.save(proto, str(renamed / "model.int8.cpu.onnx"))
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["artifacts"]["model.int8.cpu.onnx"]["sha256"] = _sha256(renamed / "model.int8.cpu.onnx")
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"outputs \[\('scores', \[10\]\)\] are not the export's"):
        write_repository(renamed, tmp_path / "repo", precision="int8")


def test_a_real_triton_server_classifies_with_the_int8_cpu_artifact(export, tmp_path):
    """nvidia-pytriton's tritonserver (Python backend): the classify ensemble on the INT8 CPU artifact
    returns what ``deploykit predict`` on model.int8.cpu.onnx returns."""
    pytest.importorskip(
        "pytriton", reason="nvidia-pytriton is not installed (pip install 'deploykit[serve]')"
    )
    http = pytest.importorskip("tritonclient.http")
    from deploykit.serving.repository import write_repository
    from deploykit.serving.server import free_port

    repo = tmp_path / "repo"
    write_repository(export, repo, backend="python", precision="int8", max_batch=16)
    ports = [free_port(), free_port(), free_port()]
    cmd = [sys.executable, "-m", "deploykit", "serve", repo, "--http-port", ports[0], "--grpc-port", ports[1],
           "--metrics-port", ports[2], "--log", tmp_path / "triton.log"]  # fmt: skip
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert banner.startswith("serving"), (banner, proc.stderr.read() if proc.poll() is not None else "")
        images = HELDOUT[::5]
        client = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        blobs = np.array([[p.read_bytes()] for p in images], dtype=object)
        tensor = http.InferInput("IMAGE", list(blobs.shape), "BYTES")
        tensor.set_data_from_numpy(blobs)
        response = client.infer("convit_tiny_classify", [tensor])
        client.close()
        classes, probs, labels = (response.as_numpy(n) for n in ("CLASSES", "PROBS", "LABELS"))
        # the same batch as the server's one request: dynamic quantization takes each activation's scale
        # from the whole batch, so an image's logits depend (slightly) on the images batched with it
        want = load(export / "model.int8.cpu.onnx").predict(images, top_k=5, batch_size=len(images))
        for row, expected in enumerate(want):
            assert list(classes[row]) == [t.cls for t in expected.topk]
            assert [s.decode() for s in labels[row]] == [t.label for t in expected.topk]
            np.testing.assert_allclose(probs[row], [t.prob for t in expected.topk], rtol=1e-4, atol=1e-6)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped tritonserver (rc=0)" in out, (proc.returncode, out, err)
