#!/usr/bin/env python3
"""Per family: export time, node counts (plain export vs deploykit's rewrites + simplification),
ONNX Runtime vs PyTorch eager latency at batch 1 and 8 (measured by ``deploykit.workflows.bench``: both runtimes in
this one process, 2 threads each, p50 of N interleaved rounds after 5 warm-up rounds), the achieved GFLOP/s
against the machine's MatMul ceiling, and parity. Prints a markdown table; where ORT misses 0.4x eager at
batch 1, prints where ORT's time goes (ORT profiler, by op type).

    python scripts/benchmark_export.py                  # one preset per family at 224 px
    python scripts/benchmark_export.py cvt_13 hvt_s_2   # chosen presets
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from deploykit.core.config import default_config
from deploykit.core.io import atomic_write_text
from deploykit.models import create_model, get_preset
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.transforms.onnx_export import export_onnx
from deploykit.workflows.bench import BenchReport, run_bench
from deploykit.workflows.export import ExportRequest, run_export

DEFAULT = ["convit_tiny", "ceit_tiny", "deepvit_16b", "cvt_13", "hvt_ti_1"]
THREADS = 2
WARMUP = 5


def ort_profile(path: Path, x: np.ndarray, top: int = 6) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        runner = OrtRunner(path, threads=THREADS, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(10):
            runner.run(x)
        trace = runner.session.end_profiling()
        events = json.loads(Path(trace).read_text())
    by_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            by_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0)
    total = sum(by_op.values()) or 1
    return ", ".join(f"{op} {us / total:.0%}" for op, us in by_op.most_common(top))


def p50(report: BenchReport, runtime: str, batch: int) -> float:
    case = report.result(runtime, "fp32", batch)
    assert case is not None, (runtime, batch, report.skipped)
    return case.p50_ms


def bench(name: str, runs: int, out_root: Path) -> dict:
    spec = get_preset(name)
    config = default_config(spec.family)
    t = time.perf_counter()
    result = run_export(ExportRequest.create(name, out_dir=out_root / name, config=config))
    export_s = time.perf_counter() - t
    torch.manual_seed(config.seed)
    model = create_model(name).eval()
    plain_nodes = len(export_onnx(model, model.input_size, config.opset, config.exporter).graph.node)
    report = run_bench(
        result.out_dir,
        batches=(1, 8),
        runtimes=("torch", "onnxruntime"),
        threads=THREADS,
        warmup=WARMUP,
        iters=runs,
    )
    ort_b1 = report.result("onnxruntime", "fp32", 1)
    row = {
        "preset": name,
        "export_s": export_s,
        "nodes_plain": plain_nodes,
        "nodes_final": result.manifest["nodes"]["final"],
        "max_abs": result.manifest["parity"]["dynamic batch"]["outputs"]["logits"]["max_abs"],
        "top1": result.manifest["parity"]["dynamic batch"]["outputs"]["logits"]["top1"],
        "torch_b1_ms": p50(report, "torch", 1),
        "ort_b1_ms": p50(report, "onnxruntime", 1),
        "torch_b8_ms": p50(report, "torch", 8),
        "ort_b8_ms": p50(report, "onnxruntime", 8),
        "ort_b1_gflops": ort_b1.gflops,
        "ort_b1_pct_ceiling": ort_b1.pct_of_matmul_ceiling,
        "bench": report.to_dict(),
    }
    row["ratio_b1"] = row["ort_b1_ms"] / row["torch_b1_ms"]
    if row["ratio_b1"] > 0.4:
        row["ort_profile_b1"] = ort_profile(
            result.onnx_path, np.random.rand(1, *model.input_size).astype(np.float32)
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("presets", nargs="*", default=DEFAULT)
    ap.add_argument("--runs", type=int, default=30, help="timed rounds per measurement (p50 reported)")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, args.runs, Path(tmp)) for n in args.presets]
    machine = rows[0]["bench"]["machine"]
    print(
        f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, {machine['cpu']}, {THREADS} threads "
        f"each; p50 of {args.runs} interleaved rounds after {WARMUP} warm-up (deploykit.workflows.bench); ONNX Runtime "
        f"MatMul ceiling {machine['matmul_gflops_fp32']:.0f} GFLOP/s\n"
    )
    print(
        "| preset | export s | nodes plain → deploykit | torch b1 ms | ORT b1 ms | ORT/torch b1 | torch b8 ms "
        "| ORT b8 ms | ORT b1 GFLOP/s (% ceiling) | max abs err | top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['export_s']:.1f} | {r['nodes_plain']} → {r['nodes_final']} | "
            f"{r['torch_b1_ms']:.1f} | {r['ort_b1_ms']:.1f} | {r['ratio_b1']:.2f} | {r['torch_b8_ms']:.1f} | "
            f"{r['ort_b8_ms']:.1f} | {r['ort_b1_gflops']:.0f} ({r['ort_b1_pct_ceiling']:.0f} %) | "
            f"{r['max_abs']:.1e} | {r['top1']:.0%} |"
        )
    for r in rows:
        if "ort_profile_b1" in r:
            print(
                f"\n{r['preset']}: ORT/torch = {r['ratio_b1']:.2f} > 0.4 at batch 1; ORT time by op: "
                f"{r['ort_profile_b1']}"
            )
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
