"""Image preprocessing for a deployed artifact: timm's eval transform, driven by the preset's ``data_config``
that every export records (ONNX ``metadata_props`` ``deploykit.preprocessing``, ``manifest.json`` and the
engine sidecar). numpy + Pillow only, so a device with TensorRT but no torch can run it.

The transform is timm's ``transforms_imagenet_eval``: resize (shorter side to ``floor(H / crop_pct)``,
aspect ratio kept) with the preset's PIL interpolation, center crop to ``H x W``, scale to [0, 1],
normalize with mean/std, HWC -> CHW.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deploykit.core.config import MAX_INPUT_SIDE, check_crop_pct
from deploykit.core.errors import ConfigError, InputError, display_path
from deploykit.core.schema import PREPROCESSING, validate

#: decoded pixels an image may have (a 50 MP photo fits)
MAX_PIXELS = 64_000_000
#: the longest side over the shortest (panoramas fit; a 10000x1 strip does not)
MAX_ASPECT = 32

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

#: what :meth:`Preprocessing.__call__` takes per image: a file path, a PIL image, an HWC uint8 array, or
#: the bytes of an encoded image file (what a Triton request carries)
ImageLike = str | Path | Image.Image | np.ndarray | bytes


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """The input contract of an artifact: ``input_size`` is ``(C, H, W)``; mean/std apply to [0, 1]."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        if len(self.input_size) != 3 or any(not 1 <= int(d) <= MAX_INPUT_SIDE for d in self.input_size):
            raise ConfigError(
                f"input_size must be (C, H, W) with sides up to {MAX_INPUT_SIDE}, got {self.input_size!r}"
            )
        if int(self.input_size[0]) not in (1, 3):
            raise ConfigError(f"images have 1 or 3 channels, input_size asks for {self.input_size[0]}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}; expected one of {sorted(INTERPOLATIONS)}"
            )
        # the one rule for crop_pct (core.config): a 1e-300 would resize to a number no image can have
        check_crop_pct(self.crop_pct, "crop_pct", max(int(self.input_size[1]), int(self.input_size[2])))
        for name in ("mean", "std"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.ndim != 1 or not values.size or not np.isfinite(values).all():
                raise ConfigError(
                    f"{name} must be finite numbers (one per channel), got {getattr(self, name)!r}"
                )
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """From a recorded ``data_config`` (JSON: lists instead of tuples; unknown keys are ignored), checked
        against :data:`deploykit.core.schema.PREPROCESSING` first: anything else is one ConfigError line."""
        record = validate(data, PREPROCESSING, "preprocessing record", error=ConfigError)
        return cls(
            input_size=tuple(int(v) for v in record["input_size"]),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
            interpolation=str(record.get("interpolation") or "bicubic"),
            crop_pct=float(record["crop_pct"] if record.get("crop_pct") is not None else 0.875),
        )

    @classmethod
    def from_data_config(cls, data_config: Any) -> Preprocessing:
        """From a model's ``data_config`` (:class:`deploykit.models.base.DataConfig`), checked like a record."""
        return cls.from_dict(vars(data_config))

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    @property
    def mode(self) -> str:
        return "RGB" if int(self.input_size[0]) == 3 else "L"

    def crop(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 ``(H, W, C)`` in [0, 1] (resize + center crop, not yet normalized)."""
        _, height, width = (int(v) for v in self.input_size)
        resample = INTERPOLATIONS[self.interpolation]
        return to_array(resize_center_crop(image.convert(self.mode), height, width, self.crop_pct, resample))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` in [0, 1] -> normalized float32 ``(N, C, H, W)``."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.size == 3 and self.mode == "L":  # a 3-channel normalization given to a gray model
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)

    def __call__(self, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """Images (paths, PIL images or HWC uint8 arrays) -> the normalized float32 ``(N, C, H, W)`` batch."""
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        if not items:
            raise InputError("no images given")
        return self.normalize(np.stack([self.crop(load_image(item)) for item in items]))


def _is_single(images: Any) -> bool:
    return isinstance(images, str | Path | Image.Image | bytes) or (
        isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (2, 3)
    )


def image_name(image: ImageLike, index: int) -> str:
    """How a result names its image: the path as given, else ``<PIL image i>`` / ``<array i>``."""
    if isinstance(image, str | Path):
        return str(image)
    kind = "PIL image" if isinstance(image, Image.Image) else "bytes" if isinstance(image, bytes) else "array"
    return f"<{kind} {index}>"


def load_image(image: ImageLike) -> Image.Image:
    """A decoded PIL image. A missing, unreadable or truncated file is one :class:`InputError` naming it."""
    if isinstance(image, Image.Image):
        check_size(image.size, "image")
        return _eight_bit(image)
    if isinstance(image, np.ndarray):
        if (
            image.dtype != np.uint8
            or image.ndim not in (2, 3)
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
        ):
            raise InputError(
                f"an image array must be uint8 (H, W) or (H, W, C) with C in 1, 3, 4; got {image.dtype} "
                f"{image.shape}"
            )
        check_size((image.shape[1], image.shape[0]), f"image array {image.shape}")
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if isinstance(image, bytes):
        return _decode(io.BytesIO(image), f"cannot decode image ({len(image)} bytes)")
    path = Path(image)
    shown = display_path(path)  # a file name holding a line break stays one line of the message
    if not path.is_file():
        raise InputError(f"image not found: {shown}" if not path.exists() else f"not an image file: {shown}")
    return _decode(path, f"cannot read image {shown}")


def _decode(source: Path | io.BytesIO, what: str) -> Image.Image:
    try:
        with Image.open(source) as opened:
            check_size(opened.size, what)  # before decoding: the header says how big it is
            opened.load()  # decode now: a truncated or corrupt file fails here, not later
            return _eight_bit(opened.copy())
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)) or type(err).__name__  # no addresses
        raise InputError(f"{what}: {reason}") from None


def check_size(size: tuple[int, int], what: str) -> None:
    """Bound the work an image can cause: at most :data:`MAX_PIXELS` decoded pixels, and an aspect ratio
    of at most :data:`MAX_ASPECT` (the resize keeps the ratio, so a 100000x1 image would become a
    gigapixel intermediate)."""
    w, h = size
    if w < 1 or h < 1:
        raise InputError(f"{what}: empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise InputError(f"{what}: {w}x{h} is {w * h / 1e6:.0f} megapixels (at most {MAX_PIXELS // 10**6})")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InputError(f"{what}: {w}x{h} has an aspect ratio over {MAX_ASPECT}:1")


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) gray images scaled to 8 bits: converting them to RGB would clip every
    value above 255 to white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else pixels.max()
        return Image.fromarray(np.clip(np.rint(pixels * 255.0 / top), 0, 255).astype(np.uint8), mode="L")
    return image


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory stands for its image files (``IMAGE_SUFFIXES``, sorted by name)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(
                    f"image directory {display_path(p)} holds no image files (looked for {IMAGE_SUFFIXES})"
                )
            out.extend(found)
        else:
            out.append(p)
    return out


# --- timm eval transform -------------------------------------------------------------------------------
def resize_center_crop(
    image: Image.Image, height: int, width: int, crop_pct: float, resample: Image.Resampling
) -> Image.Image:
    """timm ``transforms_imagenet_eval``: scale to ``floor(size / crop_pct)`` keeping the aspect ratio (the
    shorter side for a square target, ``ResizeKeepRatio`` otherwise), then torchvision's ``CenterCrop``."""
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    w, h = image.size
    if scale_h == scale_w:  # torchvision Resize(int): shorter side to the size, longer side truncated
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale_h, int(scale_h * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        ratio = max(scale_h / h, scale_w / w)
        new_w, new_h = round(w * ratio), round(h * ratio)
    image = image.resize((new_w, new_h), resample=resample)
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> float32 ``(H, W, C)`` in [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[..., None] if pixels.ndim == 2 else pixels
