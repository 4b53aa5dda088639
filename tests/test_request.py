"""The export request: every implication between the flags, in one place, and the same answer whether the
request comes from the command line or from ``deploykit.export`` (nothing is exported here: each request
is refused, or checked, before a model is built)."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

import deploykit
from deploykit.cli import cli
from deploykit.core.config import BatchProfile, CalibMethod, default_config
from deploykit.core.errors import ConfigError
from deploykit.workflows.export import ExportRequest, Int8Options

PRESET = "hvt_ti_1"


def test_int8_implies_fp16_and_carries_its_options():
    request = ExportRequest.create(PRESET, int8=True, calib="calib", calib_count=8, calib_method="max")
    assert request.fp16 and request.int8 == Int8Options(calib="calib", calib_count=8, calib_method="max")
    assert request.int8.calib_method is CalibMethod.MAX
    assert ExportRequest.create(PRESET, int8=True).int8.calib_method is CalibMethod.ENTROPY
    assert ExportRequest.create(PRESET, int8=Int8Options(calib_count=4)).fp16
    assert not ExportRequest.create(PRESET).fp16 and ExportRequest.create(PRESET).int8 is None


def test_fp16_io_needs_fp16_or_int8():
    assert ExportRequest.create(PRESET, fp16=True, fp16_io=True).fp16_io
    assert ExportRequest.create(PRESET, int8=True, fp16_io=True).fp16_io


# (flags of ExportRequest.create, the same flags on the command line, the one error both give)
REFUSED = [
    ({"fp16_io": True}, ["--fp16-io"], "--fp16-io needs --fp16"),
    ({"calib": "c"}, ["--calib", "c"], "--calib needs --int8"),
    ({"calib_count": 8}, ["--calib-count", "8"], "--calib-count needs --int8"),
    ({"calib_method": "max"}, ["--calib-method", "max"], "--calib-method needs --int8"),
    ({"int8": True, "calib_count": 0}, ["--int8", "--calib-count", "0"], "--calib-count must be a positive"),
    ({"opset": 16}, ["--opset", "16"], "opset must be an integer in [17, 24]"),
    ({"image_size": 8}, ["--image-size", "8"], "image_size must be an integer >= 16"),
    ({"num_classes": -1}, ["--num-classes", "-1"], "num_classes must be an integer >= 0"),
    ({"preprocessing": {"crop_pct": 2.0}}, ["--crop-pct", "2"], "crop_pct"),
    ({"preprocessing": {"mean": (0.5, 0.5)}}, ["--mean", "0.5,0.5"], "preprocessing.mean must be 1 or 3"),
    ({"model": "nosuch"}, [], "unknown model 'nosuch'"),
]


@pytest.mark.parametrize("flags, argv, message", REFUSED, ids=[r[2] for r in REFUSED])
def test_each_refusal_is_the_same_error_on_every_path(tmp_path, flags, argv, message):
    flags = dict(flags)
    model = flags.pop("model", PRESET)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=_escaped(message)) if model == PRESET else pytest.raises(Exception):
        ExportRequest.create(model, out_dir=out, **flags)
    api = {k: v for k, v in flags.items() if k not in ("opset",)}
    if "opset" not in flags:  # deploykit.export takes no opset (a config does)
        with pytest.raises(Exception, match=_escaped(message)):
            deploykit.export(model, out, **api)
    result = CliRunner().invoke(cli, ["export", model, "--out", str(out), "--no-engine", *argv])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()  # refused before anything was written


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def test_weights_go_with_a_preset_name():
    from deploykit.models import create_model

    model = create_model(PRESET, image_size=64)
    with pytest.raises(ConfigError, match="weights= goes with a preset name"):
        ExportRequest.create(model, weights="w.pth")
    assert ExportRequest.create(model).model is model  # a model in memory, as handed over


def test_the_flags_land_in_the_config():
    config = default_config("hvt")
    request = ExportRequest.create(
        PRESET,
        config=config,
        opset=18,
        batch=BatchProfile(min=1, opt=2, max=4),
        exporter="torchscript",
        simplify=False,
        image_size=64,
        num_classes=10,
        preprocessing={"crop_pct": 1.0},
    )
    changed = dataclasses.replace(
        config,
        opset=18,
        batch=BatchProfile(min=1, opt=2, max=4),
        exporter="torchscript",
        simplify=False,
        image_size=64,
        num_classes=10,
        preprocessing={**config.preprocessing, "crop_pct": 1.0},
    )
    assert request.config == changed
    assert ExportRequest.create(PRESET).config == config  # no flag: the family's shipped config


def test_a_config_of_another_family_is_refused():
    with pytest.raises(ConfigError, match="is for family 'cvt', the model is 'hvt'"):
        ExportRequest.create(PRESET, config=default_config("cvt"))


def test_the_request_is_frozen_and_keyword_only():
    request = ExportRequest.create(PRESET)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.fp16 = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        ExportRequest(PRESET, default_config("hvt"))  # type: ignore[misc]
