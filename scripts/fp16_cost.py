#!/usr/bin/env python3
"""What the FP16 stage costs: ``deploykit export MODEL`` and ``deploykit export MODEL --fp16``, each a fresh
process, alternated in one run (``--repeat`` pairs, median), and the ratio of their wall times; then where
the time goes, from the manifests' ``timings_s`` (stage by stage), the ``fp16.timings_s`` breakdown and
the background process's jobs (``background`` and ``fp16.background.seconds``).

    python scripts/fp16_cost.py                 # cvt_13, 2 pairs, trace cache off (both exports trace)
    python scripts/fp16_cost.py hvt --repeat 3
    python scripts/fp16_cost.py cvt --cache warm # both exports fill a cached trace (primed first, untimed)

Target (issue 20): the ``--fp16`` export at most 1.15x the FP32 export's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_export(model: str, out: Path, fp16: bool, env: dict[str, str]) -> tuple[float, dict]:
    cmd = [
        "deploykit",
        "export",
        model,
        "--out",
        str(out),
        "--quiet",
        "--no-engine",
        *(["--fp16"] if fp16 else []),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="cvt")
    ap.add_argument("--repeat", type=int, default=2, help="pairs of exports (median wall time)")
    ap.add_argument(
        "--cache", choices=["cold", "warm"], default="cold", help="trace cache off, or primed (default cold)"
    )
    args = ap.parse_args(argv)
    fp32_walls, fp16_walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, DEPLOYKIT_CACHE_DIR=str(Path(tmp) / "cache"))
        env["DEPLOYKIT_TRACE_CACHE"] = "on" if args.cache == "warm" else "off"
        if args.cache == "warm":
            timed_export(args.model, Path(tmp) / "prime", fp16=False, env=env)
        for i in range(args.repeat):
            wall32, m32 = timed_export(args.model, Path(tmp) / f"fp32-{i}", fp16=False, env=env)
            wall16, m16 = timed_export(args.model, Path(tmp) / f"fp16-{i}", fp16=True, env=env)
            fp32_walls.append(wall32)
            fp16_walls.append(wall16)
            print(
                f"pair {i + 1}: fp32 export {wall32:.1f} s, --fp16 export {wall16:.1f} s ({wall16 / wall32:.2f}x)"
            )
    a, b = statistics.median(fp32_walls), statistics.median(fp16_walls)
    cache = f"trace cache {m32['trace_cache']['status']} / {m16['trace_cache']['status']}"
    print(
        f"\n{m32['preset']} ({cache}): deploykit export {a:.1f} s, --fp16 {b:.1f} s (medians): "
        f"ratio {b / a:.2f}x, FP16 adds {b - a:.1f} s (target <= 1.15x)"
    )
    print("\nstage seconds (last pair):     fp32    --fp16")
    for stage in m16["timings_s"]:
        print(f"  {stage:<22} {m32['timings_s'].get(stage, 0.0):8.2f} {m16['timings_s'][stage]:8.2f}")
    inner = m16.get("fp16", {}).get("timings_s", {})
    if inner:
        print("\nfp16 stage breakdown:")
        for step, seconds in inner.items():
            print(f"  {step:<22} {seconds:8.2f}")
    print("\nbackground process jobs (last --fp16 export): seconds, where they ran")
    for job, record in m16.get("background", {}).items():
        print(f"  {job:<22} {record['seconds']:8.2f}  {record['ran']}")
    for note in m16.get("fp16", {}).get("background", {}).get("notes", []):
        print(f"  note: {note}")
    print(
        f"  (outside the stages: imports and process start, {a - sum(m32['timings_s'].values()):.1f} s for fp32)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
