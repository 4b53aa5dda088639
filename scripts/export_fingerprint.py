#!/usr/bin/env python3
"""Behaviour fingerprint of deploykit: what a restructuring must leave unchanged.

For the five family defaults it runs ``deploykit export PRESET --fp16`` (a fresh process each) and records
the sha256 of ``model.onnx`` and ``model.fp16.onnx``, the export's stdout and exit code, and the stdout and
exit code of ``inspect``, ``validate`` (FP32 and FP16 artifacts) and ``predict`` on them, plus the exit
codes and stderr of a few bad inputs; and an INT8 export of the trained ConViT reference (tests/data) with
validate and predict on its INT8 files. Timings are not part of it (stderr progress lines are dropped).

    python scripts/export_fingerprint.py --record fingerprint.json   # before a change
    python scripts/export_fingerprint.py --check fingerprint.json    # after it: exit 1 on any difference

The bytes depend on the torch / onnx / onnxruntime versions (the manifest records them), so compare two
runs on one machine with one environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FAMILY_DEFAULTS = ("convit_tiny", "ceit_tiny", "deepvit_16b", "cvt_13", "hvt_ti_1")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
#: a bundled photograph (predict's table of it)
PHOTOS = ROOT / "deploykit" / "data" / "photos" / "chelsea.jpg"


def sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run(args: list[str], tmp: Path) -> dict:
    """Exit code and stdout of one deploykit command, with the temp folder's path made neutral."""
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args], capture_output=True, text=True, check=False
    )
    neutral = lambda s: s.replace(str(tmp), "<tmp>").replace(str(ROOT), "<root>")  # noqa: E731
    return {"rc": proc.returncode, "stdout": neutral(proc.stdout)}


def run_error(args: list[str], tmp: Path) -> dict:
    """Exit code and stderr of a command that must fail."""
    proc = subprocess.run(
        [sys.executable, "-m", "deploykit", *args], capture_output=True, text=True, check=False
    )
    return {"rc": proc.returncode, "stderr": proc.stderr.replace(str(tmp), "<tmp>")}


def int8_entry(tmp: Path) -> dict:
    """An INT8 export of the trained ConViT reference, calibrated on its labelled digits folder: both INT8
    files' bytes, the export's stdout and validate / predict on the INT8 files."""
    d = tmp / "int8"
    weights, calib = DATA / "reference" / "convit.safetensors", DATA / "digits" / "calib"
    args = ["export", "convit", "--weights", str(weights), "--int8", "--calib", str(calib)]
    entry = {"export": run([*args, "--out", str(d), "--quiet"], tmp)}
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8.cpu.onnx"):
        entry[name] = sha256(d / name)
    for name in ("model.int8.onnx", "model.int8.cpu.onnx"):
        entry[f"validate {name}"] = run(["validate", str(d / name)], tmp)
        entry[f"validate reference {name}"] = run(
            ["validate", str(d / name), "--reference", str(d / "reference.npz")], tmp
        )
    heldout = DATA / "digits" / "heldout" / "3"
    entry["predict"] = run(["predict", str(d / "model.int8.cpu.onnx"), str(heldout), "--top-k", "2"], tmp)
    print(f"int8: {entry['model.int8.onnx']} {entry['model.int8.cpu.onnx']}", file=sys.stderr)
    return entry


def fingerprint(presets: tuple[str, ...]) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for preset in presets:
            d = tmp / preset
            entry = {"export": run(["export", preset, "--fp16", "--out", str(d), "--quiet"], tmp)}
            entry["model.onnx"] = sha256(d / "model.onnx")
            entry["model.fp16.onnx"] = sha256(d / "model.fp16.onnx")
            entry["inspect"] = run(["inspect", str(d / "model.onnx")], tmp)
            for f in ("model.onnx", "model.fp16.onnx"):
                entry[f"validate {f}"] = run(["validate", str(d / f), "--model", preset], tmp)
            entry["validate reference"] = run(
                ["validate", str(d / "model.fp16.onnx"), "--reference", str(d / "reference.npz")], tmp
            )
            entry["predict"] = run(["predict", str(d / "model.onnx"), str(PHOTOS), "--top-k", "3"], tmp)
            print(f"{preset}: {entry['model.onnx']} {entry['model.fp16.onnx']}", file=sys.stderr)
            out[preset] = entry
        out["int8"] = int8_entry(tmp)
        first = tmp / presets[0] / "model.onnx"
        out["errors"] = {
            "unknown model": run_error(["export", "nosuchmodel", "--out", str(tmp / "x")], tmp),
            "missing artifact": run_error(
                ["validate", str(tmp / "missing.onnx"), "--model", presets[0]], tmp
            ),
            "wrong family": run_error(["validate", str(first), "--model", "cvt_13"], tmp),
            "bad batch": run_error(["export", presets[0], "--batch", "8,4,1", "--out", str(tmp / "y")], tmp),
        }
    return out


def diff(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}/{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path, help="write the fingerprint here")
    group.add_argument("--check", type=Path, help="compare with this recorded fingerprint")
    ap.add_argument("presets", nargs="*", default=list(FAMILY_DEFAULTS))
    args = ap.parse_args(argv)
    current = fingerprint(tuple(args.presets))
    if args.record:
        args.record.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        print(f"recorded {args.record}")
        return 0
    recorded = json.loads(args.check.read_text())
    recorded = {k: v for k, v in recorded.items() if k in current}
    differences = diff(recorded, current)
    for line in differences:
        print(line)
    print(f"{len(differences)} difference(s) from {args.check}")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
