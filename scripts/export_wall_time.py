#!/usr/bin/env python3
"""How long ``deploykit export MODEL`` takes, against the naive route on the same machine in the same run.

    python scripts/export_wall_time.py                # cvt, 3 rounds
    python scripts/export_wall_time.py convit --repeat 5

Each round runs, as fresh processes one after the other: ``deploykit export MODEL --no-engine --quiet``
with the trace cache off (cold: it traces), the same with the cache primed (warm: it fills the cached
graph), and the naive route — a script that imports torch, builds the peer model (Hugging Face CvT-13 for
``cvt``, timm ``convit_tiny`` for ``convit``, else deploykit's own preset: ``naive_route.peer``), exports it
with ``torch.onnx.export(..., dynamo=True)`` and simplifies it with onnxsim (``naive_route.naive_export``),
and checks nothing. Prints each
round and the medians, and the ratio of each deploykit route to the naive one: the machine's speed
cancels out of the ratio (these machines change CPU from day to day), the seconds do not.

Target (issue 20): ``deploykit export cvt`` <= 20 s warm, where the naive route took 12 s, i.e. <= 1.67x it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ["ceit", "convit", "cvt", "deepvit", "hvt"]

#: the naive route in a fresh process: naive_route.py's peer model and bare export (+ onnxsim), saved
NAIVE = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import onnx
from naive_route import naive_export, peer

model, _ = peer(sys.argv[2], Path(sys.argv[3]).parent)
onnx.save(naive_export(model, 224), sys.argv[3])
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", nargs="?", default="cvt", choices=FAMILIES)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (medians)")
    args = ap.parse_args(argv)
    walls: dict[str, list[float]] = {"cold": [], "warm": [], "naive": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = dict(os.environ, DEPLOYKIT_CACHE_DIR=str(root / "cache"))
        envs = {
            "cold": dict(base, DEPLOYKIT_TRACE_CACHE="off"),
            "warm": dict(base, DEPLOYKIT_TRACE_CACHE="on"),
        }

        def export(kind: str, out: str) -> float:
            cmd = ["deploykit", "export", args.family, "--out", str(root / out), "--no-engine", "--quiet"]
            return timed(cmd, envs[kind])

        export("warm", "prime")  # stores the trace (untimed)
        scripts = str(Path(__file__).resolve().parent)  # naive_route.py's folder, for the naive process
        for i in range(args.repeat):
            walls["cold"].append(export("cold", f"cold-{i}"))
            walls["warm"].append(export("warm", f"warm-{i}"))
            folder = root / f"naive-{i}"
            folder.mkdir()
            naive = [sys.executable, "-c", NAIVE, scripts, args.family, str(folder / "model.onnx")]
            walls["naive"].append(timed(naive, base))
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in walls.items()), flush=True)
    median = {k: statistics.median(v) for k, v in walls.items()}
    print(
        f"\n`deploykit export {args.family}` (medians of {args.repeat}, fresh processes, `--no-engine --quiet`):"
    )
    print("| route | wall time | / naive route |")
    print("|---|---|---|")
    for kind, label in (
        ("cold", "deploykit, trace cache off"),
        ("warm", "deploykit, trace cache warm"),
        ("naive", "naive route (export + onnxsim, no checks)"),
    ):
        print(f"| {label} | {median[kind]:.1f} s | {median[kind] / median['naive']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
