"""INT8 against FP32 on every family's trained reference (tests/data/reference), in one run:

    python scripts/int8_reference.py [--out DIR] [--family convit ...] [--iters 50]

For each family: ``deploykit export FAMILY --weights tests/data/reference/FAMILY.safetensors --int8
--calib tests/data/digits/calib`` (entropy calibration, 64 images of the training split), then

- held-out accuracy (360 digits never trained on) of model.onnx, model.int8.onnx (the TensorRT Q/DQ graph,
  run by ONNX Runtime) and model.int8.cpu.onnx, and their top-1 agreement with the FP32 file;
- ONNX Runtime CPU latency from ``deploykit bench DIR --runtime onnxruntime --batch 1,8 --iters N`` (the
  files interleaved in one process, each timed run after 50 ms of untimed runs of the same case): p50 as a
  ratio to model.onnx's.

Prints a Markdown table (the one in docs/int8.md) and the CPU it ran on. Timings are this machine's, this
run's: compare ratios, not milliseconds across days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
FILES = ("model.onnx", "model.int8.onnx", "model.int8.cpu.onnx")


def heldout():
    from deploykit.runtime.preprocess import Preprocessing
    from deploykit.validation.calibration import calibration_set

    pre = Preprocessing(
        input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear", crop_pct=1.0
    )
    found = calibration_set(DATA / "digits" / "heldout", pre, count=360, num_classes=10)
    return found.eval_images, found.eval_labels


def sessions(folder: Path) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return {name: ort.InferenceSession(str(folder / name), options) for name in FILES}


def latency(folder: Path, iters: int) -> dict[tuple[str, int], float]:
    """``deploykit bench``'s p50 ratio to model.onnx per (file, batch)."""
    report = folder / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "deploykit",
            "bench",
            str(folder),
            "--runtime",
            "onnxruntime",
            "--batch",
            "1,8",
            "--iters",
            str(iters),
            "--json",
            str(report),
            "--quiet",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows = json.loads(report.read_text())["results"]
    return {(r["artifact"], r["batch"]): r["ratio_to_fp32"] for r in rows}


def main(argv: list[str] | None = None) -> int:
    from deploykit.workflows.export import ExportRequest, Int8Options, run_export

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=["convit", "ceit", "deepvit", "cvt", "hvt"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="int8-reference-"))
    images, labels = heldout()
    rows = []
    for family in args.family or ["convit", "ceit", "deepvit", "cvt", "hvt"]:
        t = time.perf_counter()
        request = ExportRequest.create(
            family,
            out_dir=out / family,
            weights=DATA / "reference" / f"{family}.safetensors",
            int8=Int8Options(calib=DATA / "digits" / "calib"),
        )
        result = run_export(request)
        seconds = time.perf_counter() - t
        runs = sessions(result.out_dir)
        predicted = {
            n: np.concatenate(
                [s.run(None, {"input": images[i : i + 60]})[0] for i in range(0, 360, 60)]
            ).argmax(1)
            for n, s in runs.items()
        }
        acc = {n: float((p == labels).mean()) for n, p in predicted.items()}
        agree = {n: float((p == predicted["model.onnx"]).mean()) for n, p in predicted.items()}
        ratio = latency(result.out_dir, args.iters)
        p50 = json.loads((result.out_dir / "bench.json").read_text())["results"]
        fp32_ms = next(r["p50_ms"] for r in p50 if r["artifact"] == "model.onnx" and r["batch"] == 1)
        kept = result.manifest["int8"]["tensorrt"]["kept_blocks"]
        rows.append(
            f"| {family} | {acc['model.onnx']:.1%} | {acc['model.int8.onnx']:.1%} "
            f"({agree['model.int8.onnx']:.1%}) | {acc['model.int8.cpu.onnx']:.1%} ({agree['model.int8.cpu.onnx']:.1%}) "
            f"| {fp32_ms:.2f} ms | {ratio['model.int8.cpu.onnx', 1]:.2f} / {ratio['model.int8.cpu.onnx', 8]:.2f} "
            f"| {ratio['model.int8.onnx', 1]:.2f} / {ratio['model.int8.onnx', 8]:.2f} "
            f"| {', '.join(k['block'] for k in kept) or 'none'} "
            f"| {seconds:.0f} s |"
        )
        print(rows[-1], flush=True)
    from deploykit.workflows.bench.measure import cpu_model

    print(
        f"\n{cpu_model()}, ONNX Runtime {ort.__version__}, deploykit bench p50 of {args.iters} interleaved rounds\n"
    )
    print(
        "| family | FP32 accuracy | TensorRT Q/DQ graph accuracy (agreement) | CPU INT8 accuracy (agreement) "
        "| FP32 p50, batch 1 | CPU INT8 / FP32, batch 1 / 8 | Q/DQ graph on ORT / FP32, batch 1 / 8 "
        "| blocks kept | export --int8 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
