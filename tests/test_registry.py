"""Registry-parametrized: every preset is tested the moment it is registered."""

import pytest
import torch

import deploykit.models as dm
from deploykit.core.errors import ConfigError, UnknownModelError
from deploykit.models import (
    count_parameters,
    create_model,
    get_preset,
    list_aliases,
    list_models,
    preset_parameter_count,
)

PRESETS = list_models()
FAMILIES = {"convit", "ceit", "deepvit", "cvt", "hvt"}
# reduced resolution for the every-preset forward (HVT needs enough tokens to pool four times)
SMALL_SIZE = {"hvt": 128}
FULL_SIZE = ["convit_tiny", "ceit_tiny", "deepvit_16b", "cvt_13", "hvt_ti_1"]


def test_every_family_is_registered_with_alias():
    assert {get_preset(n).family for n in PRESETS} == FAMILIES
    aliases = list_aliases()
    assert set(aliases) == FAMILIES
    assert aliases["cvt"] == "cvt_13"
    for alias, target in aliases.items():
        assert get_preset(alias).name == target


@pytest.mark.parametrize("name", PRESETS)
def test_parameter_count_matches_reference(name):
    preset = get_preset(name)
    assert preset.reference_params_m is not None, f"{name} has no reference parameter count"
    got = round(preset_parameter_count(name) / 1e6, preset.reference_params_decimals)
    assert got == pytest.approx(preset.reference_params_m, abs=1e-9), (name, got, preset.reference_params_m)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_classifies(name):
    preset = get_preset(name)
    size = SMALL_SIZE.get(preset.family, 64)
    model = create_model(name, image_size=size, num_classes=7).eval()
    assert model.num_classes == 7
    assert model.input_size == (3, size, size)
    assert model.preset_name == name
    assert model.data_config.mean == preset.mean and model.data_config.std == preset.std
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, *model.input_size)
            feats = model.forward_features(x)
            assert feats.shape == (batch, model.num_features)
            out = model.forward_head(feats)
            assert out.shape == (batch, 7)
            assert torch.isfinite(out).all()
            torch.testing.assert_close(model(x), out)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_preset_forward(name):
    model = create_model(name).eval()
    assert model.input_size[1:] == (224, 224)
    with torch.no_grad():
        out1 = model(torch.randn(1, *model.input_size))
        x3 = torch.randn(3, *model.input_size)
        out3 = model(x3)
        again = model(x3)
    assert out1.shape == (1, 1000) and out3.shape == (3, 1000)
    torch.testing.assert_close(out3, again, rtol=0, atol=0)  # eval mode is deterministic


def test_overrides_win_over_preset():
    model = create_model("convit_tiny", num_classes=3, image_size=32)
    assert model.num_classes == 3 and model.image_size == 32


def test_family_alias_builds_the_default_preset():
    a = create_model("convit", image_size=32)
    b = create_model("convit_tiny", image_size=32)
    assert count_parameters(a) == count_parameters(b)
    assert a.preset_name == "convit_tiny"


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="cvt_13") as info:
        create_model("cvt13")
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError, match="convit_tiny"):
        get_preset("convit_tiy")


def test_duplicate_registration_raises():
    preset = get_preset("convit_tiny")
    with pytest.raises(ConfigError, match="already registered"):
        dm.register_preset(preset)
    with pytest.raises(ConfigError, match="already registered"):
        dm.register_alias("cvt", "cvt_21")


def test_list_models_pattern():
    assert list_models("cvt*") == ["cvt_13", "cvt_21", "cvt_w24"]
    assert all(n.startswith("hvt_") for n in list_models("hvt_*"))
    assert list_models("nomatch*") == []


def test_seed_class_names_importable():
    from deploykit.models import CeiT, ConViT, CvT, CvTConfig, DeepViT, HPool_ViT  # noqa: F401
