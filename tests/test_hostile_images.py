"""Images that would amplify work or lie: extreme aspect ratios and pixel counts are refused in one line
before they are resized, 16-bit images are scaled (not clipped), and any generated image — sizes, aspect
ratios, modes, bit depths, truncations — gives a batch or one InputError, never a traceback."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from deploykit.core.errors import InputError
from deploykit.runtime.preprocess import MAX_ASPECT, MAX_PIXELS, Preprocessing

PRE = Preprocessing(input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(10000, 1), (100000, 1), (1, 20000), (MAX_ASPECT * 10 + 10, 10)])
def test_extreme_aspect_ratios_are_refused_before_the_resize(size):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="aspect ratio over 32:1") as info:
        PRE(png(Image.new("L", size)))
    assert "\n" not in str(info.value)
    # a 100000x1 strip resized with its aspect ratio kept would need gigabytes; the refusal needs nothing
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB


def test_too_many_pixels_are_refused_from_the_header(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)  # 1-bit: small on disk, huge decoded
    with pytest.raises(InputError, match=rf"huge.png: {side}x{side} is \d+ megapixels"):
        PRE(path)


def test_a_panorama_within_the_bound_is_fine():
    batch = PRE(png(Image.new("RGB", (MAX_ASPECT * 20, 20), (200, 10, 10))))
    assert batch.shape == (1, 3, 32, 32) and np.isfinite(batch).all()


def test_sixteen_bit_images_are_scaled_not_clipped():
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    eight = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    sixteen, reference = PRE(png(Image.fromarray(ramp))), PRE(png(Image.fromarray(eight)))
    assert np.abs(sixteen - reference).max() < 1e-6  # the same picture in 8 and 16 bits
    assert abs(float(sixteen.mean())) < 0.3  # a ramp around mid-gray, not white (clipping saturates >255)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "LA"]


@st.composite
def encoded_images(draw):
    mode = draw(st.sampled_from(MODES))
    w = draw(st.integers(1, 400))
    h = draw(st.integers(1, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    image = Image.new(mode, (w, h))
    if mode in ("L", "RGB", "RGBA", "CMYK", "LA", "P"):
        noise = rng.integers(0, 256, (h, w, len(image.getbands())), dtype=np.uint8)
        image = Image.fromarray(
            noise.squeeze(-1) if noise.shape[-1] == 1 else noise, mode=mode if mode != "P" else None
        )
        image = image.convert(mode)
    fmt = draw(st.sampled_from(["PNG", "TIFF", "BMP", "JPEG"]))
    try:
        data = png(image, fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot hold
        data = png(image, "TIFF")
    cut = draw(st.one_of(st.none(), st.integers(0, max(len(data) - 1, 0))))
    return data if cut is None else data[:cut]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_images())
def test_any_generated_image_gives_a_batch_or_one_input_error(data):
    try:
        batch = PRE(data)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert batch.shape == (1, 3, 32, 32) and batch.dtype == np.float32 and np.isfinite(batch).all()
