#!/usr/bin/env python3
"""Per family: export time, node counts (plain export vs deploykit's rewrites + simplification),
ONNX Runtime vs PyTorch eager latency (batch 1 and 8, 2 threads each, median of N runs after warm-up,
both measured in this one process), and parity. Prints a markdown table; where ORT misses 0.4x eager at
batch 1, prints where ORT's time goes (ORT profiler, by op type).

    python scripts/benchmark_export.py                  # one preset per family at 224 px
    python scripts/benchmark_export.py cvt_13 hvt_s_2   # chosen presets
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from deploykit.export.config import default_config
from deploykit.export.onnx_export import export_onnx
from deploykit.export.pipeline import run_export
from deploykit.models import create_model, get_preset
from deploykit.runtime.ort_runner import OrtRunner

DEFAULT = ["convit_tiny", "ceit_tiny", "deepvit_16b", "cvt_13", "hvt_ti_1"]
THREADS = 2


def median_ms(fn, runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


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


def bench(name: str, runs: int, out_root: Path) -> dict:
    spec = get_preset(name)
    config = default_config(spec.family)
    t = time.perf_counter()
    result = run_export(name, out_root / name, config)
    export_s = time.perf_counter() - t
    torch.manual_seed(config.seed)
    model = create_model(name).eval()
    plain_nodes = len(export_onnx(model, model.input_size, config.opset, config.exporter).graph.node)
    runner = OrtRunner(result.onnx_path, threads=THREADS)
    row = {
        "preset": name,
        "export_s": export_s,
        "nodes_plain": plain_nodes,
        "nodes_final": result.manifest["nodes"]["final"],
        "max_abs": result.manifest["parity"]["dynamic batch"]["outputs"]["logits"]["max_abs"],
        "top1": result.manifest["parity"]["dynamic batch"]["outputs"]["logits"]["top1"],
    }
    torch.set_num_threads(THREADS)
    for batch in (1, 8):
        x = torch.randn(batch, *model.input_size)
        xn = x.numpy()
        with torch.inference_mode():
            row[f"torch_b{batch}_ms"] = median_ms(lambda x=x: model(x), runs)
        row[f"ort_b{batch}_ms"] = median_ms(lambda xn=xn: runner.run(xn), runs)
    row["ratio_b1"] = row["ort_b1_ms"] / row["torch_b1_ms"]
    if row["ratio_b1"] > 0.4:
        row["ort_profile_b1"] = ort_profile(
            result.onnx_path, np.random.rand(1, *model.input_size).astype(np.float32)
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("presets", nargs="*", default=DEFAULT)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per measurement (median reported)")
    ap.add_argument("--json", help="also write the rows as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(n, args.runs, Path(tmp)) for n in args.presets]
    print(f"torch {torch.__version__}, {THREADS} threads each, median of {args.runs} runs after 5 warm-up\n")
    print(
        "| preset | export s | nodes plain → deploykit | torch b1 ms | ORT b1 ms | ORT/torch b1 | torch b8 ms "
        "| ORT b8 ms | max abs err | top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['export_s']:.1f} | {r['nodes_plain']} → {r['nodes_final']} | "
            f"{r['torch_b1_ms']:.1f} | {r['ort_b1_ms']:.1f} | {r['ratio_b1']:.2f} | {r['torch_b8_ms']:.1f} | "
            f"{r['ort_b8_ms']:.1f} | {r['max_abs']:.1e} | {r['top1']:.0%} |"
        )
    for r in rows:
        if "ort_profile_b1" in r:
            print(
                f"\n{r['preset']}: ORT/torch = {r['ratio_b1']:.2f} > 0.4 at batch 1; ORT time by op: "
                f"{r['ort_profile_b1']}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
