"""Train the reference models the precision gates are tested on (test fixtures, not a product).

No trained checkpoint of the five families can be downloaded on the project's machines, and a randomly
initialised model has nearly flat logits, so "top-1 still agrees after INT8" would prove nothing. This script
trains a small configuration of each family on scikit-learn's bundled ``digits`` (1,797 8x8 images, 10
classes), upsampled to 64x64 RGB, deterministically (seeded, one split), in minutes on 2 CPU cores:

    pip install -e ".[train]"                       # scikit-learn
    python scripts/train_reference.py                 # all five families
    python scripts/train_reference.py --family convit --epochs 14

It writes, under ``tests/data/`` (``--out``):

- ``reference/<family>.safetensors``: FP16 weights saved with ``deploykit.models.save_checkpoint`` (the
  header records preset, architecture, labels "0".."9" and the preprocessing), so
  ``deploykit export convit --weights tests/data/reference/convit.safetensors`` rebuilds the model;
- ``digits/heldout/<class>/*.png``: the held-out split (never trained on), an ImageFolder;
- ``digits/calib/<class>/*.png``: a calibration split drawn from the training images;
- ``reference/accuracy.json``: each model's held-out accuracy (PyTorch FP32 on the FP16-stored weights),
  the median top-1/top-2 logit gap, the training time and the exact configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from deploykit.models import create_model
from deploykit.models.checkpoints import save_checkpoint
from deploykit.models.pretrained import read_pretrained

SIZE = 64
SEED = 0
HELDOUT = 360
CALIB_PER_CLASS = 10
PREPROCESSING = {
    "crop_pct": 1.0,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
}

#: a small configuration of each family (about 0.8-1.5 M parameters; 64x64 input, 10 classes)
CONFIGS: dict[str, tuple[str, dict]] = {
    "convit": (
        "convit_tiny",
        dict(d_model=128, encoder_mlp_d=512, encoder_num_heads=4, num_encoder_blocks=6, num_gated_blocks=4),
    ),
    "ceit": (
        "ceit_tiny",
        dict(
            d_model=128,
            encoder_num_heads=4,
            num_encoder_blocks=6,
            lca_encoder_num_heads=4,
            i2t_out_channels=32,
        ),
    ),
    "deepvit": (
        "deepvit_16b",
        dict(d_model=128, encoder_mlp_d=384, encoder_num_heads=4, num_encoder_blocks=6),
    ),
    "cvt": ("cvt_13", dict(dim_embed=[32, 64, 128], num_heads=[1, 2, 4], depth=[1, 1, 3])),
    "hvt": (
        "hvt_ti_1",
        dict(d_model=128, encoder_mlp_d=512, encoder_num_heads=4, num_encoder_blocks=6, hvt_pool=[1]),
    ),
}


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (N, 64, 64, 3) uint8 RGB (white on black, bilinear upsampling) and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = []
    for small in data.images:
        gray = Image.fromarray(np.round(small * (255.0 / 16.0)).astype(np.uint8), mode="L")
        big = gray.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
        images.append(np.asarray(big))
    return np.stack(images), data.target.astype(np.int64)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified indices: train, held-out (HELDOUT images, 36 per class) and calibration (from train)."""
    rng = np.random.default_rng(SEED)
    train, held, calib = [], [], []
    per_class = HELDOUT // 10
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.extend(idx[:per_class])
        train.extend(idx[per_class:])
        calib.extend(idx[per_class : per_class + CALIB_PER_CLASS])
    return np.array(sorted(train)), np.array(sorted(held)), np.array(sorted(calib))


def write_folder(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for i in indices:
        target = folder / str(int(labels[i]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target / f"{int(i):04d}.png", optimize=True)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def augment(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 6 pixels (zero fill = black background)."""
    out = torch.full_like(batch, -1.0)
    shifts = torch.randint(-6, 7, (batch.shape[0], 2), generator=gen)
    for k, (dy, dx) in enumerate(shifts.tolist()):
        src = batch[k, :, max(0, -dy) : SIZE - max(0, dy), max(0, -dx) : SIZE - max(0, dx)]
        out[k, :, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
    return out


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 120]) for i in range(0, len(x), 120)])
    top2 = logits.topk(2, dim=1).values
    return float((logits.argmax(1) == y).float().mean()), float((top2[:, 0] - top2[:, 1]).median())


def train(family: str, x_train, y_train, x_held, y_held, *, epochs: int, out: Path) -> dict:
    preset, arch = CONFIGS[family]
    torch.manual_seed(SEED)
    model = create_model(preset, image_size=SIZE, num_classes=10, **arch)
    gen = torch.Generator().manual_seed(SEED)
    batch, lr = 64, 1e-3
    steps = epochs * math.ceil(len(x_train) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = loss_fn(model(augment(x_train[idx], gen)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        acc, _ = evaluate(model, x_held, y_held)
        print(f"{family} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out {acc:.1%}", flush=True)
    seconds = time.perf_counter() - start
    path = save_checkpoint(
        model,
        out / "reference" / f"{family}.safetensors",
        labels=[str(c) for c in range(10)],
        preprocessing=PREPROCESSING,
        dtype=torch.float16,
    )
    # the accuracy of what is stored: FP16 weights read back into an FP32 model
    stored = create_model(preset, image_size=SIZE, num_classes=10, **arch)
    stored.load_state_dict(read_pretrained(path).state)
    acc, gap = evaluate(stored, x_held, y_held)
    print(f"{family}: held-out accuracy {acc:.2%} (stored FP16 weights), median logit gap {gap:.2f}")
    return {
        "preset": preset,
        "model_args": arch | {"image_size": SIZE, "num_classes": 10},
        "epochs": epochs,
        "heldout_accuracy": round(acc, 4),
        "heldout_images": len(y_held),
        "median_top1_top2_gap": round(gap, 3),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=sorted(CONFIGS), help="default: all five")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data")
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    images, labels = digits_images()
    train_idx, held_idx, calib_idx = split(labels)
    for name, idx in (("heldout", held_idx), ("calib", calib_idx)):
        folder = args.out / "digits" / name
        if not folder.exists():
            write_folder(folder, images, labels, idx)
    x_train, y_train = to_tensor(images[train_idx]), torch.from_numpy(labels[train_idx])
    x_held, y_held = to_tensor(images[held_idx]), torch.from_numpy(labels[held_idx])
    record_path = args.out / "reference" / "accuracy.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    for family in args.family or list(CONFIGS):
        record[family] = train(family, x_train, y_train, x_held, y_held, epochs=args.epochs, out=args.out)
        record[family]["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
        record_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
