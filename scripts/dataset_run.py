#!/usr/bin/env python3
"""Measure ``deploykit validate --dataset`` on a 5,000-image dataset: wall time, images/s and max RSS of the
command, against the pure inference time of both sides (PyTorch FP32 and the artifact on the same images,
pre-decoded, in the same batches, timed in a fresh process).

The dataset is made from the held-out digits (tests/data/digits/heldout, 360 images): each image again with
a seeded random crop, flip and brightness change, as PNG files in class folders, until there are ``--images``.

    python scripts/dataset_run.py                              # the trained ConViT reference (64 px)
    python scripts/dataset_run.py --preset cvt_13              # CvT-13 at 224 px, random weights (size, not accuracy)

Each command runs in its own process; the child's max RSS is ``resource.getrusage(RUSAGE_CHILDREN)``.
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
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "tests" / "data" / "digits" / "heldout"
REFERENCE = ROOT / "tests" / "data" / "reference" / "convit.safetensors"

INFERENCE = r"""
import json, sys, time
import numpy as np
from deploykit.core.record import artifact_record
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation.dataset import dataset_batches, read_dataset
from deploykit.workflows.dataset_pass import dataset_batch
from deploykit.workflows.validate.rebuild import artifact_preset, rebuild_model
from deploykit.runtime.torch_runner import TorchRunner

artifact, folder = sys.argv[1], sys.argv[2]
record = artifact_record(artifact)
pre = Preprocessing.from_dict(record.preprocessing)
listing = read_dataset(folder, labels=record.checked_labels(), num_classes=record.num_classes)
batches = [b.images for b in dataset_batches(listing, pre, dataset_batch(pre))]
model = rebuild_model(artifact, record, artifact_preset(artifact, record)).model
out = {}
for name, runner in (("reference", TorchRunner(model)), ("artifact", OrtRunner(artifact))):
    runner.run(batches[0])
    t = time.perf_counter()
    for b in batches:
        runner.run(b)
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def make_dataset(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    sources = sorted(HELDOUT.glob("*/*.png"))
    for i in range(count):
        source = sources[i % len(sources)]
        image = Image.open(source).convert("RGB")
        if i >= len(sources):
            w, h = image.size
            left, top = rng.integers(0, max(1, w // 8), size=2)
            image = image.crop(
                (left, top, w - rng.integers(0, max(1, w // 8)), h - rng.integers(0, max(1, h // 8)))
            )
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))
        target = folder / source.parent.name / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)


#: runs one command as its only child and prints that child's max RSS (KiB) as its last stderr line
WRAPPER = (
    "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)"
)


def run(args: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds and max RSS (bytes) of one deploykit command, in a fresh process of its own."""
    t = time.perf_counter()
    command = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "deploykit", *args]
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode not in (0, 1):
        raise SystemExit(f"deploykit {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]) * 1024, proc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset",
        default=None,
        help="a preset at its default size, random weights (default: the trained ConViT reference)",
    )
    ap.add_argument("--images", type=int, default=5000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deploykit-dataset-run-") as tmp:
        folder, out = Path(tmp) / "data", Path(tmp) / "export"
        make_dataset(folder, args.images)
        export = ["export", args.preset] if args.preset else ["export", "convit", "--weights", str(REFERENCE)]
        if args.preset:
            export += ["--num-classes", "10"]
        _, _, proc = run([*export, "--out", str(out), "--no-engine", "--quiet"])
        artifact = out / "model.onnx"
        report = Path(tmp) / "report.json"
        seconds, rss, proc = run(["validate", str(artifact), "--dataset", str(folder), "--json", str(report)])
        facts = json.loads(report.read_text())["dataset"]
        pure = subprocess.run(
            [sys.executable, "-c", INFERENCE, str(artifact), str(folder)], capture_output=True, text=True
        )
        if pure.returncode:
            raise SystemExit(pure.stderr[-2000:])
        inference = json.loads(pure.stdout)
    row = {
        "model": args.preset or "convit (trained reference)",
        "images": facts["images"],
        "batch": facts["batch"],
        "validate wall s": round(seconds, 1),
        "dataset pass s": facts["seconds"],
        "images/s": facts["images_per_second"],
        "max RSS MB": round(rss / 2**20),
        "inference s (pass)": facts["inference_seconds"],
        "pure inference s": {k: round(v, 2) for k, v in inference.items()},
    }
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
