"""The validation batch: images a parity check feeds to every runner.

Gaussian noise is a poor parity input: attention over noise is nearly uniform, so precision loss in the
softmax or LayerNorm paths barely moves the logits, and a broken export can pass. The default batch is
therefore mostly real photographs (public-domain and CC0 photos bundled with deploykit,
``deploykit/data/photos``), then synthetic images with natural-image statistics (gradients, shapes, blobs,
checkerboards, stripes, 1/f noise), then a few uniform-noise images as an out-of-distribution probe.

Every image goes through timm's eval transform: resize (shorter side to ``floor(H / crop_pct)``, aspect kept)
with the preset's PIL interpolation, center crop to ``H x W``, scale to [0, 1], normalize with mean/std.
The batch is a pure function of ``(data_config, count, seed)``: the same arguments give identical bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from deploykit.core.errors import InputError, display_path
from deploykit.runtime.preprocess import Preprocessing, expand_image_paths, load_image, to_array

if TYPE_CHECKING:
    from deploykit.models.base import DataConfig


# Photographs bundled as package data (``deploykit/data/photos``: scikit-image samples in the public domain
# or CC0, downscaled; sources in SOURCES.md there), so every install validates on the same real photos.
# Ordered so that the first ones (used for small batches) mix colour photos with a few grayscale ones.
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "coins",
    "retina",
    "clock",
    "brick",
    "grass",
)


@dataclass(frozen=True, kw_only=True)
class ValidationBatch:
    """``images`` is float32 ``(N, C, H, W)``, normalized; ``names[i]`` says where image ``i`` came from."""

    images: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


def validation_batch(
    data_config: DataConfig, count: int = 16, seed: int = 0, image_dir: Path | None = None
) -> ValidationBatch:
    """Build the parity-check batch for a model's input contract.

    Without ``image_dir``: ``count`` images, about 9/16 photographs, 6/16 synthetic and 1/16 (at least one,
    once ``count >= 2``) uniform noise, in that order. Past the first pass over the bundled photos, photos
    repeat as random crops and flips; synthetic kinds cycle with fresh random parameters.

    With ``image_dir``: every image file in it (``IMAGE_SUFFIXES``, sorted by name, first frame only),
    converted to RGB (or L when ``C == 1``). ``count`` only caps the batch when the directory holds more
    images; a smaller directory is used as is, never padded. ``seed`` is unused.

    Raises :class:`InputError` for a bad ``count``, a missing or empty directory or an unreadable file, and
    :class:`ConfigError` for an unknown interpolation or channel count.
    """
    pre = Preprocessing(
        input_size=tuple(data_config.input_size),
        mean=tuple(data_config.mean),
        std=tuple(data_config.std),
        interpolation=data_config.interpolation,
        crop_pct=data_config.crop_pct,
    )
    if count < 1:
        raise InputError(f"count must be at least 1, got {count}")
    _, height, width = (int(v) for v in pre.input_size)
    mode = pre.mode
    preprocess = pre.crop

    if image_dir is not None:
        names, pixels = _load_directory(Path(image_dir), mode, count, preprocess)
    else:
        names, pixels = _generated_images(
            mode, height=height, width=width, count=count, seed=seed, preprocess=preprocess
        )

    images = pre.normalize(np.stack(pixels))  # (N, H, W, C) in [0, 1] -> normalized (N, C, H, W)
    return ValidationBatch(images=images, names=tuple(names))


# --- user images ---------------------------------------------------------------------------------------


def _load_directory(
    image_dir: Path, mode: str, count: int, preprocess: Callable[[Image.Image], np.ndarray]
) -> tuple[list[str], list[np.ndarray]]:
    if not image_dir.is_dir():
        raise InputError(f"image directory {display_path(image_dir)} does not exist or is not a directory")
    files = expand_image_paths([image_dir])[:count]
    return [p.name for p in files], [preprocess(load_image(p).convert(mode)) for p in files]


# --- generated images ----------------------------------------------------------------------------------


def _generated_images(
    mode: str,
    *,
    height: int,
    width: int,
    count: int,
    seed: int,
    preprocess: Callable[[Image.Image], np.ndarray],
) -> tuple[list[str], list[np.ndarray]]:
    n_noise = max(1, count // 16) if count >= 2 else 0
    n_synthetic = (count - n_noise) * 2 // 5
    n_photo = count - n_noise - n_synthetic
    photos = PHOTOS
    names, pixels = [], []
    for i in range(n_photo):
        rng = np.random.default_rng([seed, 0, i])
        name = photos[i % len(photos)]
        image = _load_photo(name, mode)
        cycle = i // len(photos)
        if cycle > 0:  # later passes: a random crop (30-100% of the area), flipped half of the time
            image, flipped = _random_crop_flip(image, rng)
            name = f"{name}:crop{cycle}" + ("-flip" if flipped else "")
        names.append(f"photo:{name}")
        pixels.append(preprocess(image))

    kinds = list(_SYNTHETIC)
    for i in range(n_synthetic):
        rng = np.random.default_rng([seed, 1, i])
        kind = kinds[i % len(kinds)]
        rgb = _SYNTHETIC[kind](rng, height, width)  # (H, W, 3) float in [0, 1]
        image = Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")
        names.append(f"synthetic:{kind}-{i}")
        pixels.append(to_array(image.convert(mode)))

    channels = 3 if mode == "RGB" else 1
    for i in range(n_noise):
        rng = np.random.default_rng([seed, 2, i])
        names.append(f"noise-{i}")
        # uint8 steps like every other image (a golden reference stores the pixels as uint8)
        pixels.append(rng.integers(0, 256, (height, width, channels)).astype(np.float32) / 255.0)
    return names, pixels


@lru_cache(maxsize=64)
def _load_photo(name: str, mode: str) -> Image.Image:
    """A decoded bundled photo (cached: callers must not modify it in place; PIL ops return copies)."""
    file = resources.files("deploykit") / "data" / "photos" / f"{name}.jpg"
    with resources.as_file(file) as path, Image.open(path) as image:
        return image.convert(mode)


def _random_crop_flip(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, bool]:
    w, h = image.size
    area = w * h * rng.uniform(0.3, 1.0)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(w, max(16, round(math.sqrt(area * aspect))))
    crop_h = min(h, max(16, round(math.sqrt(area / aspect))))
    left, top = int(rng.integers(0, w - crop_w + 1)), int(rng.integers(0, h - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    flipped = bool(rng.random() < 0.5)
    if flipped:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image, flipped


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates scaled so the shorter side spans [0, 1]: ``(yy, xx)``, each ``(H, W)``."""
    scale = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return (yy + 0.5) / scale, (xx + 0.5) / scale


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.1, 0.9, size=3)


def _rotated(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(0.0, math.pi)
    return xx * math.cos(theta) + yy * math.sin(theta), -xx * math.sin(theta) + yy * math.cos(theta)


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A two-colour linear gradient in a random direction, with a soft vignette."""
    yy, xx = _grid(height, width)
    u, _ = _rotated(rng, yy, xx)
    t = ((u - u.min()) / max(u.max() - u.min(), 1e-9))[..., None]
    image = _colour(rng) * (1.0 - t) + _colour(rng) * t
    cy, cx = yy.mean(), xx.mean()
    vignette = 1.0 - rng.uniform(0.1, 0.4) * ((yy - cy) ** 2 + (xx - cx) ** 2) / (cy**2 + cx**2)
    return image * vignette[..., None]


def _shapes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Filled ellipses, rectangles and triangles over a gradient background, edges slightly softened."""
    background = Image.fromarray(np.round(_gradient(rng, height, width) * 255.0).astype(np.uint8))
    draw = ImageDraw.Draw(background)
    for _ in range(int(rng.integers(4, 9))):
        fill = tuple(int(c) for c in np.round(_colour(rng) * 255.0))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        box = (cx - rx, cy - ry, cx + rx, cy + ry)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [(float(x), float(y)) for x, y in rng.uniform(0, 1, (3, 2)) * (width, height)], fill=fill
            )
    blurred = background.filter(ImageFilter.GaussianBlur(radius=max(height, width) / 224.0))
    return np.asarray(blurred, dtype=np.float64) / 255.0


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Out-of-focus coloured Gaussian blobs composited over a flat background."""
    yy, xx = _grid(height, width)
    image = np.broadcast_to(_colour(rng), (height, width, 3)).copy()
    for _ in range(int(rng.integers(5, 11))):
        cy, cx = rng.uniform(0, yy.max()), rng.uniform(0, xx.max())
        sigma = rng.uniform(0.06, 0.25)
        alpha = (0.9 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))[..., None]
        image = image * (1.0 - alpha) + _colour(rng) * alpha
    return image


def _checkerboard(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A rotated two-colour checkerboard with a random cell size (4-16 cells across)."""
    yy, xx = _grid(height, width)
    u, v = _rotated(rng, yy, xx)
    period = 1.0 / rng.uniform(4, 16)
    mask = ((np.floor(u / period) + np.floor(v / period)) % 2)[..., None]
    return _colour(rng) * (1.0 - mask) + _colour(rng) * mask


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two crossing sinusoidal gratings (a plaid) mixing three colours."""
    yy, xx = _grid(height, width)
    image = np.broadcast_to(_colour(rng), (height, width, 3)).copy()
    for _ in range(2):
        u, _ = _rotated(rng, yy, xx)
        t = (0.5 + 0.5 * np.sin(2 * math.pi * u * rng.uniform(3, 20) + rng.uniform(0, 2 * math.pi)))[
            ..., None
        ]
        image = image * (1.0 - 0.5 * t) + _colour(rng) * 0.5 * t
    return image


def _pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """1/f noise (the amplitude spectrum of natural images): a luminance field plus weaker colour fields."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.sqrt(fy**2 + fx**2), 1.0 / max(height, width))
    amplitude[0, 0] = 0.0

    def field() -> np.ndarray:
        spectrum = amplitude * (
            rng.standard_normal(amplitude.shape) + 1j * rng.standard_normal(amplitude.shape)
        )
        f = np.fft.irfft2(spectrum, s=(height, width))
        return (f - f.mean()) / max(f.std(), 1e-12)

    luminance = field()[..., None]
    chroma = np.stack([field() for _ in range(3)], axis=-1)
    return rng.uniform(0.35, 0.55) + 0.18 * luminance + 0.06 * chroma


_SYNTHETIC: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "gradient": _gradient,
    "shapes": _shapes,
    "blobs": _blobs,
    "checkerboard": _checkerboard,
    "stripes": _stripes,
    "pink-noise": _pink_noise,
}
