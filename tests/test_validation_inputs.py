"""The validation batch: mix, shapes, determinism, preprocessing, user image directories."""

import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploykit.core.errors import ConfigError, DeployKitError, InputError
from deploykit.models.base import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from deploykit.validation import ValidationBatch, validation_batch

SMALL = DataConfig(input_size=(3, 64, 64))
GRAY = DataConfig(input_size=(1, 64, 64), mean=(0.5,), std=(0.25,))


def _kinds(names) -> dict[str, int]:
    prefixes = ("photo:", "synthetic:", "noise-")
    return {p: sum(n.startswith(p) for n in names) for p in prefixes}


def _lag1_autocorrelation(image: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels of a (C, H, W) image: ~1 for photos, ~0 for noise."""
    return float(np.corrcoef(image[:, :, :-1].ravel(), image[:, :, 1:].ravel())[0, 1])


def _denormalize(batch: ValidationBatch, config: DataConfig) -> np.ndarray:
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    return batch.images * std + mean


def test_default_batch_shape_dtype_and_mix():
    batch = validation_batch(SMALL, count=16)
    assert batch.images.shape == (16, 3, 64, 64)
    assert batch.images.dtype == np.float32 and batch.images.flags.c_contiguous
    assert len(batch) == len(batch.names) == 16 and len(set(batch.names)) == 16
    kinds = _kinds(batch.names)
    assert kinds["photo:"] >= 8 and kinds["synthetic:"] >= 1 and kinds["noise-"] >= 1
    assert sum(kinds.values()) == 16
    assert "photo:astronaut" in batch.names


def test_large_batch_cycles_photos_with_crops_and_more_synthetic_kinds():
    batch = validation_batch(SMALL, count=64)
    assert batch.images.shape == (64, 3, 64, 64) and len(set(batch.names)) == 64
    kinds = _kinds(batch.names)
    assert kinds["photo:"] >= 32 and kinds["synthetic:"] >= 12 and kinds["noise-"] >= 1
    assert any(":crop" in n for n in batch.names)
    synthetic_kinds = {n.split(":")[1].rsplit("-", 1)[0] for n in batch.names if n.startswith("synthetic:")}
    assert len(synthetic_kinds) >= 5
    # a repeated photo is a different crop, not a copy
    first, again = (
        batch.names.index("photo:astronaut"),
        next(i for i, n in enumerate(batch.names) if n.startswith("photo:astronaut:crop")),
    )
    assert not np.array_equal(batch.images[first], batch.images[again])


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_small_counts(count):
    batch = validation_batch(SMALL, count=count)
    assert batch.images.shape[0] == len(batch.names) == count
    assert np.isfinite(batch.images).all()


def test_deterministic_bytes_and_seed_dependence():
    a = validation_batch(SMALL, count=24, seed=3)
    b = validation_batch(SMALL, count=24, seed=3)
    assert a.names == b.names and a.images.tobytes() == b.images.tobytes()
    c = validation_batch(SMALL, count=24, seed=4)
    assert c.images.tobytes() != a.images.tobytes()


def test_normalization_and_photos_are_not_noise():
    batch = validation_batch(SMALL, count=16)
    pixels = _denormalize(batch, SMALL)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # normalization is exactly (x - mean) / std
    photos = np.array([n.startswith("photo:") for n in batch.names])
    per_channel_mean = batch.images[photos].mean(axis=(0, 2, 3))
    assert np.all(np.abs(per_channel_mean) < 1.0)
    assert 0.4 < batch.images[photos].std() < 2.0

    corr = {n: _lag1_autocorrelation(img) for n, img in zip(batch.names, batch.images)}
    photo_corr = [v for n, v in corr.items() if n.startswith("photo:")]
    noise_corr = [v for n, v in corr.items() if n.startswith("noise-")]
    synthetic_corr = [v for n, v in corr.items() if n.startswith("synthetic:")]
    assert np.median(photo_corr) > 0.8 and min(photo_corr) > 0.4
    assert min(synthetic_corr) > 0.4
    assert max(abs(v) for v in noise_corr) < 0.2
    noise = batch.images[[n.startswith("noise-") for n in batch.names]]
    denormalized = _denormalize(ValidationBatch(images=noise, names=()), SMALL)
    assert denormalized.std() == pytest.approx(1 / math.sqrt(12), rel=0.1)


def test_grayscale_model():
    batch = validation_batch(GRAY, count=16)
    assert batch.images.shape == (16, 1, 64, 64) and batch.images.dtype == np.float32
    pixels = _denormalize(batch, GRAY)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_three_channel_normalization_given_to_a_gray_model_uses_its_average():
    config = DataConfig(input_size=(1, 32, 32))  # ImageNet mean/std
    batch = validation_batch(config, count=4)
    mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
    pixels = batch.images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_non_square_input_size():
    batch = validation_batch(DataConfig(input_size=(3, 48, 80)), count=16)
    assert batch.images.shape == (16, 3, 48, 80)


def test_invalid_arguments():
    with pytest.raises(InputError, match="count"):
        validation_batch(SMALL, count=0)
    with pytest.raises(ConfigError, match="interpolation"):
        validation_batch(DataConfig(input_size=(3, 32, 32), interpolation="area"))
    with pytest.raises(ConfigError, match="channels"):
        validation_batch(DataConfig(input_size=(2, 32, 32)))


def test_fast_at_full_resolution():
    config = DataConfig(input_size=(3, 224, 224))
    validation_batch(config, count=2)  # warm the photo cache, as a second call in a session would be
    start = time.perf_counter()
    batch = validation_batch(config, count=64)
    elapsed = time.perf_counter() - start
    assert batch.images.shape == (64, 3, 224, 224)
    assert elapsed < 4.0, f"64 images at 224 took {elapsed:.2f} s"


# --- user image directories ----------------------------------------------------------------------------


def _write_images(directory: Path, sizes) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i, (w, h) in enumerate(sizes):
        name = f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(directory / name)
        names.append(name)
    return names


def test_image_dir_loads_sorted_files_and_ignores_other_suffixes(tmp_path):
    names = _write_images(tmp_path, [(40, 30), (30, 50), (64, 64)])
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("L", (20, 20), 128).save(tmp_path / "gray.BMP")
    batch = validation_batch(SMALL, count=16, image_dir=tmp_path)
    assert batch.names == tuple(sorted([*names, "gray.BMP"]))  # fewer than count: used as is, not padded
    assert batch.images.shape == (4, 3, 64, 64)
    gray = batch.images[batch.names.index("gray.BMP")]
    assert np.allclose(
        _denormalize(ValidationBatch(images=gray[None], names=()), SMALL), 128 / 255, atol=1e-5
    )

    capped = validation_batch(SMALL, count=2, image_dir=tmp_path)
    assert capped.names == batch.names[:2]
    np.testing.assert_array_equal(capped.images, batch.images[:2])


def test_image_dir_matches_timm_eval_preprocessing(tmp_path):
    """Resize the shorter side to floor(32 / 0.875) = 36 (bicubic), center-crop 32x32, normalize."""
    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8))  # W=100, H=60
    source.save(tmp_path / "wide.png")
    config = DataConfig(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic")
    batch = validation_batch(config, image_dir=tmp_path)

    resized = source.resize((int(36 * 100 / 60), 36), resample=Image.Resampling.BICUBIC)  # (60, 36)
    left, top = round((60 - 32) / 2), round((36 - 32) / 2)
    expected = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255.0
    expected = (expected - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(batch.images[0], expected.transpose(2, 0, 1), atol=1e-6)


def test_image_dir_grayscale_model_converts_to_l(tmp_path):
    _write_images(tmp_path, [(70, 70)])
    batch = validation_batch(GRAY, image_dir=tmp_path)
    assert batch.images.shape == (1, 1, 64, 64)


def test_image_dir_corrupt_file_is_named(tmp_path):
    _write_images(tmp_path, [(32, 32)])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match="broken.jpg"):
        validation_batch(SMALL, image_dir=tmp_path)


def test_image_dir_truncated_file_is_named(tmp_path):
    _write_images(tmp_path, [(64, 64)])
    data = (tmp_path / "img_0.png").read_bytes()
    (tmp_path / "img_1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="img_1.png"):
        validation_batch(SMALL, image_dir=tmp_path)


def test_image_dir_empty_or_missing(tmp_path):
    (tmp_path / "readme.md").write_text("no images here")
    with pytest.raises(InputError, match="no image files"):
        validation_batch(SMALL, image_dir=tmp_path)
    with pytest.raises(InputError, match="does not exist") as info:
        validation_batch(SMALL, image_dir=tmp_path / "missing")
    assert isinstance(info.value, DeployKitError) and isinstance(info.value, ValueError)
