#!/usr/bin/env python3
"""Load test a Triton model with N concurrent clients x M requests (tritonclient HTTP or gRPC).

    python scripts/triton_load_test.py --url 127.0.0.1:8000 --model hvt_ti_1 --concurrency 8 --requests 25
    python scripts/triton_load_test.py --url 127.0.0.1:8001 --protocol grpc --model hvt_ti_1_classify \\
        --images photos/ --json load.json

Reports client latency (p50/p90/p99/mean ms), throughput, errors (counted, with samples) and the server's
view from its Prometheus ``/metrics`` and ``/v2/models/NAME/stats``: inferences vs executions (how many
requests dynamic batching merged), the batch sizes it ran, queue and compute time per request.

Inputs: a model with an image-bytes input (``TYPE_STRING``, e.g. the ``NAME_classify`` ensemble) gets the
files of ``--images`` (default: scikit-image's bundled photographs); a tensor model gets seeded random
float32 batches of its configured shape. ``--verify-onnx FILE`` runs every input through ONNX Runtime too
and reports the largest absolute difference of the outputs. ``--verify-reference reference.npz`` (the
export's golden reference) sends the reference's stored images to a tensor model instead and checks every
served answer against the PyTorch FP32 outputs stored at export, with the stored tolerances of
``--reference-precision`` (what the server runs: fp32, fp16 or int8) — a deployed server checked against
PyTorch's numbers without PyTorch. Exit 0 when every request succeeded (and the reference check passed), 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np

from deploykit.core.errors import first_line

#: the validation photographs bundled with deploykit (the default images for an image-bytes model)
PHOTOS = Path(str(resources.files("deploykit") / "data" / "photos"))

METRICS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def scrape(metrics_url: str, model: str) -> dict[str, float]:
    """Sum of each metric over the versions (and failure reasons) of ``model``."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$", line)
        if m and m.group(1) in out and f'model="{model}"' in m.group(2):
            out[m.group(1)] += float(m.group(3))
    return out


def batch_stats(http_url: str, model: str) -> dict[int, int]:
    """Executions per batch size, from Triton's statistics extension."""
    url = f"http://{http_url}/v2/models/{model}/stats"
    stats = json.loads(urllib.request.urlopen(url, timeout=10).read())
    sizes: dict[int, int] = {}
    for version in stats.get("model_stats", []):
        for entry in version.get("batch_stats", []):
            sizes[int(entry["batch_size"])] = sizes.get(int(entry["batch_size"]), 0) + int(
                entry["compute_infer"]["count"]
            )
    return dict(sorted(sizes.items()))


def client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def model_io(module, url: str, model: str, protocol: str) -> tuple[dict, list[dict]]:
    client = module.InferenceServerClient(url)
    config = (
        client.get_model_config(model, as_json=True) if protocol == "grpc" else client.get_model_config(model)
    )
    config = config.get("config", config)
    return config["input"][0], config["output"]


def make_inputs(input_cfg: dict, count: int, batch: int, images: Path | None, seed: int) -> list[np.ndarray]:
    """One array per request: (batch, 1) image bytes, or (batch, *dims) float32."""
    if input_cfg["data_type"] == "TYPE_STRING":
        folder = images if images is not None else PHOTOS
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        blobs = [f.read_bytes() for f in files]
        return [
            np.array([[blobs[(i * batch + j) % len(blobs)]] for j in range(batch)], dtype=object)
            for i in range(count)
        ]
    dims = [int(d) for d in input_cfg["dims"]]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, *dims)).astype(np.float32) for _ in range(count)]


def _client(module, args: argparse.Namespace):
    if args.protocol == "grpc":
        return module.InferenceServerClient(args.url)
    return module.InferenceServerClient(
        args.url, connection_timeout=args.timeout, network_timeout=args.timeout
    )


def _load(module, args, io: tuple[dict, list[dict]], inputs: list[np.ndarray]) -> tuple:
    """``args.concurrency`` clients, each sending ``args.requests`` requests one after the other, started
    together; returns (latencies in ms per client, error lines, the outputs by request index, wall time)."""
    (input_cfg, outputs), datatype = io, _datatype(io[0])
    latencies: list[list[float]] = [[] for _ in range(args.concurrency)]
    errors: list[str] = []
    results: dict[int, np.ndarray] = {}
    lock = threading.Lock()
    start = threading.Barrier(args.concurrency + 1)
    kwargs = {"client_timeout": args.timeout} if args.protocol == "grpc" else {}

    def worker(w: int) -> None:
        client = _client(module, args)
        start.wait()
        for r in range(args.requests):
            i = w * args.requests + r
            tensor = module.InferInput(input_cfg["name"], list(inputs[i].shape), datatype)
            tensor.set_data_from_numpy(inputs[i])
            wanted = [module.InferRequestedOutput(o["name"]) for o in outputs]
            t0 = time.perf_counter()
            try:
                value = client.infer(args.model, [tensor], outputs=wanted, **kwargs).as_numpy(
                    outputs[0]["name"]
                )
            except Exception as exc:  # every failure is counted and a few are shown, the load goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {first_line(exc)}")
                continue
            latencies[w].append((time.perf_counter() - t0) * 1e3)
            if args.verify_onnx or args.verify_reference:
                with lock:
                    results[i] = value

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(args.concurrency)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, errors, results, time.perf_counter() - t0


def _datatype(input_cfg: dict) -> str:
    return (
        "BYTES" if input_cfg["data_type"] == "TYPE_STRING" else input_cfg["data_type"].removeprefix("TYPE_")
    )


def _server_stats(args, before: dict[str, float], ok: int, http_url: str | None) -> dict:
    """What the server counted for this load (its metrics before and after)."""
    try:  # the counters of the last requests can land just after their responses: wait for them
        deadline = time.monotonic() + 3.0
        after = scrape(args.metrics_url, args.model)
        while after["nv_inference_request_success"] - before["nv_inference_request_success"] < ok:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
            after = scrape(args.metrics_url, args.model)
    except OSError as exc:
        return {"error": f"cannot read {args.metrics_url}: {exc}"}
    delta = {k: after[k] - before[k] for k in METRICS}
    execs = delta["nv_inference_exec_count"]
    stats = {
        "requests_ok": int(delta["nv_inference_request_success"]),
        "requests_failed": int(delta["nv_inference_request_failure"]),
        "inference_count": int(delta["nv_inference_count"]),
        "execution_count": int(execs),
        "avg_batch": round(delta["nv_inference_count"] / execs, 2) if execs else None,
        "queue_ms_per_request": round(delta["nv_inference_queue_duration_us"] / 1e3 / max(1, ok), 3),
        "compute_ms_per_execution": round(
            delta["nv_inference_compute_infer_duration_us"] / 1e3 / max(1, execs), 3
        ),
    }
    if http_url:
        stats["batch_sizes_since_start"] = batch_stats(http_url, args.model)
    return stats


def run(args: argparse.Namespace) -> dict:
    module = client_module(args.protocol)
    io = model_io(module, args.url, args.model, args.protocol)
    total = args.concurrency * args.requests
    golden = _golden(args, io[0])
    if golden is not None:  # the reference's images, in order, cycled over the requests
        images = golden.batch(args.reference_precision)[0]
        order = [[(i * args.batch + j) % len(images) for j in range(args.batch)] for i in range(total)]
        inputs = [images[rows] for rows in order]
    else:
        inputs = make_inputs(io[0], total, args.batch, args.images, args.seed)
    http_url = args.http_url or (args.url if args.protocol == "http" else None)
    before = scrape(args.metrics_url, args.model) if args.metrics_url else None
    latencies, errors, results, wall = _load(module, args, io, inputs)
    lat = np.array([x for per in latencies for x in per])
    ok = int(lat.size)
    report: dict = {
        "model": args.model,
        "protocol": args.protocol,
        "url": args.url,
        "concurrency": args.concurrency,
        "requests_per_client": args.requests,
        "batch": args.batch,
        "requests": total,
        "ok": ok,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall else 0.0,
        "images_per_s": round(ok * args.batch / wall, 2) if wall else 0.0,
    }
    if ok:
        report |= {f"p{q}_ms": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 99)}
        report |= {"mean_ms": round(float(lat.mean()), 2), "max_ms": round(float(lat.max()), 2)}
    if before is not None:
        report["server"] = _server_stats(args, before, ok, http_url)
    if args.verify_onnx and results:
        from deploykit.runtime.ort_runner import OrtRunner

        runner = OrtRunner(args.verify_onnx)
        diffs = [float(np.abs(runner.run(inputs[i]) - results[i]).max()) for i in sorted(results)]
        report["max_abs_vs_onnxruntime"] = max(diffs)
        report["verified_requests"] = len(diffs)
    if golden is not None:
        report["reference"] = _verify_reference(golden, args, order, results, total)
    return report


def _golden(args: argparse.Namespace, input_cfg: dict):
    """The golden reference of ``--verify-reference``, for a tensor model of its input shape."""
    if args.verify_reference is None:
        return None
    from deploykit.validation.reference import read_reference

    golden = read_reference(args.verify_reference)
    if input_cfg["data_type"] == "TYPE_STRING":
        raise SystemExit(
            f"--verify-reference needs the tensor model (e.g. {args.model.removesuffix('_classify')}), not an "
            "image-bytes model: resizing would change the reference's pixels"
        )
    shape = [int(d) for d in (golden.identity.get("input") or {}).get("shape", [])[1:]]
    dims = [int(d) for d in input_cfg["dims"]]
    if shape and dims != shape:
        raise SystemExit(f"--verify-reference: the reference's input is {shape}, the model takes {dims}")
    return golden


def _verify_reference(
    golden, args, order: list[list[int]], results: dict[int, np.ndarray], total: int
) -> dict:
    """Every served answer against the stored PyTorch FP32 output of its image, gated like ``validate``."""
    from deploykit.validation.metrics import compare_outputs

    _, outputs = golden.batch(args.reference_precision)
    served = [(order[i][j], results[i][j]) for i in sorted(results) for j in range(len(order[i]))]
    if not served:
        return {"passed": False, "answers": 0, "failures": ["no answer came back"]}
    rows = np.array([row for row, _ in served])
    candidate = np.stack([value for _, value in served]).astype(np.float32)
    parity = compare_outputs(
        {"logits": outputs[rows].astype(np.float32)},
        {"logits": candidate},
        golden.tolerances(args.reference_precision),
        stage=f"served ({args.reference_precision})",
    )
    return {
        "file": str(args.verify_reference),
        "sha256": golden.sha256,
        "precision": args.reference_precision,
        "answers": len(served),
        "requests": len(results),
        "of_requests": total,
        "passed": parity.passed and len(results) == total,
        "max_abs": parity.worst_metric("max_abs"),
        "cosine_min": parity.worst_metric("cosine_min"),
        "top1": parity.worst_metric("top1"),
        "failures": [c.describe() for c in parity.failures],
    }


def print_report(r: dict) -> None:
    print(
        f"{r['model']} over {r['protocol']}: {r['concurrency']} clients x {r['requests_per_client']} requests "
        f"(batch {r['batch']}): {r['ok']} ok, {r['errors']} errors in {r['wall_s']} s"
    )
    if r["ok"]:
        print(
            f"  latency ms: p50 {r['p50_ms']}  p90 {r['p90_ms']}  p99 {r['p99_ms']}  mean {r['mean_ms']}  max {r['max_ms']}"
        )
        print(f"  throughput: {r['throughput_rps']} requests/s, {r['images_per_s']} images/s")
    for sample in r["error_samples"]:
        print(f"  error: {sample}")
    server = r.get("server")
    if server and "error" not in server:
        print(
            f"  server: {server['inference_count']} inferences in {server['execution_count']} executions "
            f"(avg batch {server['avg_batch']}), queue {server['queue_ms_per_request']} ms/request, "
            f"compute {server['compute_ms_per_execution']} ms/execution"
        )
        if "batch_sizes_since_start" in server:
            print(f"  batch sizes run (since start): {server['batch_sizes_since_start']}")
    ref = r.get("reference")
    if ref:
        verdict = "PASS" if ref["passed"] else "FAIL"
        print(
            f"  reference {verdict}: {ref['answers']} answers vs PyTorch FP32 ({ref['precision']} tolerances): "
            f"max abs {ref.get('max_abs', float('nan')):.3g}, cosine min {ref.get('cosine_min', float('nan')):.6f}, "
            f"top-1 {ref.get('top1', float('nan')):.1%}"
        )
        for failure in ref["failures"]:
            print(f"  reference failed: {failure}")
    if "max_abs_vs_onnxruntime" in r:
        print(
            f"  max abs difference vs ONNX Runtime: {r['max_abs_vs_onnxruntime']:.3g} ({r['verified_requests']} requests)"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--url", default="127.0.0.1:8000", help="HOST:PORT of the HTTP (or --protocol grpc) endpoint"
    )
    ap.add_argument("--protocol", choices=("http", "grpc"), default="http")
    ap.add_argument("--model", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per client")
    ap.add_argument("--batch", type=int, default=1, help="images per request")
    ap.add_argument("--images", type=Path, help="folder of images for an image-bytes model")
    ap.add_argument(
        "--metrics-url", default="http://127.0.0.1:8002/metrics", help="'' to skip the server metrics"
    )
    ap.add_argument("--http-url", help="HOST:PORT of HTTP for /stats when --protocol grpc")
    ap.add_argument("--verify-onnx", type=Path, help="compare every output with ONNX Runtime on this file")
    ap.add_argument(
        "--verify-reference",
        type=Path,
        help="send the export's reference.npz images and check the answers against its stored outputs",
    )
    ap.add_argument(
        "--reference-precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="which stored tolerances the served model is held to (default fp32)",
    )
    ap.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request before it counts as failed"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the report as JSON")
    args = ap.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.batch < 1:
        ap.error("--concurrency, --requests and --batch must be >= 1")
    if args.images is not None and (
        not args.images.is_dir()
        or not any(p.suffix.lower() in (".jpg", ".jpeg", ".png") for p in args.images.iterdir())
    ):
        ap.error(f"--images {args.images}: not a folder of .jpg/.png images")
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = report["errors"] or (report.get("reference") and not report["reference"]["passed"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
