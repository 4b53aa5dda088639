"""CeiT: seed example, presets, LeFF/LCA numerics, resolution. The checks every family shares (every
option trained and evaluated, determinism, batch sizes, ...) are tests/test_families.py's."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_models import randomize_bn, tiny_model
from torch import nn
from torch.nn import functional as F

from deploykit.core.errors import ConfigError
from deploykit.models import create_model
from deploykit.models.base import InputShapeError
from deploykit.models.ceit import LCA, CeiT, LeFF
from deploykit.models.ceit_checks import CHECKED_ARGUMENTS, check_ceit_arguments
from deploykit.models.layers import DropPath
from deploykit.models.registry import count_parameters, get_preset, list_models, preset_parameter_count


def tiny(**overrides: object) -> CeiT:
    """The shared tiny CeiT (tests/tiny_models.py: 32 px -> 3x3 tokens, d=16, 2 blocks, 5 classes)."""
    return tiny_model("ceit", **overrides)


# ------------------------------------------------------------------------------------ seed and presets
@pytest.mark.slow
def test_seed_example_default_model() -> None:
    model = CeiT().eval()
    assert model.grid_size == 13  # cv stem at 224 px: 109 -> 54 -> 13x13 tokens
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.slow
def test_preset_ceit_tiny_forward() -> None:
    model = create_model("ceit_tiny").eval()
    assert model.input_size == (3, 224, 224)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", list_models("ceit*"))
def test_preset_parameter_counts(name: str) -> None:
    preset = get_preset(name)
    count = preset_parameter_count(name) / 1e6
    assert round(count, preset.reference_params_decimals) == preset.reference_params_m


def test_alias_and_data_config() -> None:
    with torch.device("meta"):
        model = create_model("ceit")
    assert model.preset_name == "ceit_tiny"
    assert model.data_config.crop_pct == 0.9 and model.data_config.interpolation == "bicubic"


def test_official_state_dict_layout() -> None:
    with torch.device("meta"):
        sd = create_model("ceit_tiny").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["pos_embed"] == (1, 197, 192)
    assert shapes["pos_layer_embed"] == (1, 12, 192)
    assert shapes["i2t.conv.weight"] == (64, 3, 7, 7) and "i2t.conv.bias" not in shapes
    assert shapes["patch_embed.proj.weight"] == (192, 64, 4, 4) and "patch_embed.norm.weight" not in shapes
    assert shapes["encoder.blocks.0.attn.qkv.bias"] == (576,)
    assert shapes["encoder.blocks.11.mlp.conv1.weight"] == (768, 192, 1, 1)
    assert shapes["encoder.blocks.11.mlp.conv2.weight"] == (768, 1, 3, 3)
    assert shapes["encoder.blocks.11.mlp.bn3.running_var"] == (192,)
    assert shapes["lca.attn.qkv.bias"] == (576,) and shapes["lca.feedforward.fc1.weight"] == (768, 192)
    assert shapes["norm.weight"] == (192,) and shapes["head.fc.weight"] == (1000, 192)
    assert not any(".pointwise." in k for k in shapes)


@pytest.mark.parametrize(("separable", "cv_reference_m"), [(True, 15.53), (False, 8.44)])
def test_cv_layout_parameter_count(separable: bool, cv_reference_m: float) -> None:
    """The documented library's counts (d=192, 3 heads, 224 px) differ from ours only by the absolute position embedding
    (169 extra positions) and channel BatchNorm in LeFF: BN2d(4d)+BN2d(d) instead of two BN1d(169 tokens)."""
    with torch.device("meta"):
        model = CeiT(
            d_model=192, encoder_num_heads=3, lca_encoder_num_heads=3, leff_depthwise_separable=separable
        )
    extra = 169 * 192 + 12 * (2 * (4 * 192 + 192) - 2 * 2 * 169)
    assert round((count_parameters(model) - extra) / 1e6, 2) == cv_reference_m


# ------------------------------------------------------------------------------------ options
def test_official_preset_small_input_and_layer_embed() -> None:
    model = create_model(
        "ceit_tiny",
        image_size=32,
        d_model=16,
        encoder_num_heads=2,
        lca_encoder_num_heads=2,
        num_encoder_blocks=2,
        num_classes=3,
    )
    assert model.grid_size == 2  # 32 -> conv7/2 p3 (16) -> maxpool p1 (8) -> patch 4 -> 2x2
    assert model.pos_layer_embed.shape == (1, 2, 16)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3) and model.pos_layer_embed.grad is not None


# ------------------------------------------------------------------------------------ resolution
def test_not_pinned_to_one_resolution() -> None:
    model = CeiT(
        image_size=224,
        d_model=16,
        encoder_num_heads=2,
        lca_encoder_num_heads=2,
        num_encoder_blocks=2,
        classifier_mlp_d=8,
        i2t_out_channels=4,
        num_classes=7,
    ).eval()
    assert model.fixed_resolution is False and model.grid_size == 13
    with torch.no_grad():
        assert model(torch.randn(2, 3, 256, 256)).shape == (2, 7)  # 15x15 grid


def test_position_embedding_resampling() -> None:
    model = tiny()
    g, d = model.grid_size, 16
    assert model.position_embedding(g) is model.pos_embed
    pos = model.position_embedding(5)
    assert pos.shape == (1, 26, d)
    torch.testing.assert_close(pos[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(5, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(pos[:, 1:], expected.flatten(2).transpose(1, 2))


def test_non_square_input_is_rejected() -> None:
    with pytest.raises(InputShapeError, match="square"):
        tiny()(torch.randn(1, 3, 32, 40))


# ------------------------------------------------------------------------------------ LeFF
def make_leff(out_act: bool = False, kernel: int = 3, separable: bool = False) -> LeFF:
    torch.manual_seed(0)
    leff = LeFF(
        8, expand_ratio=2, kernel_size=kernel, padding=(kernel - 1) // 2, separable=separable, out_act=out_act
    )
    randomize_bn(leff)
    return leff.eval()


def test_leff_class_token_bypasses_and_locality() -> None:
    """Row-major token grid + 3x3 depthwise conv: a token only influences its 3x3 neighbourhood."""
    leff = make_leff()
    x = torch.randn(2, 1 + 25, 8)
    y = x.clone()
    y[:, 1] += 1.0  # grid position (0, 0)
    with torch.no_grad():
        ox, oy = leff(x), leff(y)
    torch.testing.assert_close(ox[:, 0], x[:, 0], rtol=0, atol=0)
    diff = (ox - oy)[:, 1:].abs().amax(dim=(0, 2)).reshape(5, 5)
    assert (diff[:2, :2] > 1e-4).all()
    assert (diff[2:, :] == 0).all() and (diff[:, 2:] == 0).all()


def test_leff_channel_batchnorm_is_resolution_independent() -> None:
    leff = make_leff()
    assert leff.bn1.num_features == 16 and leff.bn3.num_features == 8
    for n in (4, 9, 49):
        assert leff(torch.randn(2, 1 + n, 8)).shape == (2, 1 + n, 8)


def test_leff_output_activation_option() -> None:
    x = torch.randn(4, 1 + 16, 8) * 3
    with torch.no_grad():
        plain = make_leff(out_act=False)(x)[:, 1:]
        gelu = make_leff(out_act=True)(x)[:, 1:]
    assert plain.min() < -0.5  # bn3 output unbounded below
    assert gelu.min() >= -0.1701  # GELU's minimum
    torch.testing.assert_close(gelu, F.gelu(plain))


def test_leff_separable_adds_pointwise_conv() -> None:
    assert isinstance(make_leff(separable=False).pointwise, nn.Identity)
    pw = make_leff(separable=True).pointwise
    assert isinstance(pw, nn.Conv2d) and pw.weight.shape == (16, 16, 1, 1)


# ------------------------------------------------------------------------------------ LCA
def make_lca(ln_order: str, include_last: bool) -> LCA:
    torch.manual_seed(0)
    return LCA(
        8,
        num_heads=2,
        mlp_ratio=2,
        qkv_bias=True,
        attn_drop=0.0,
        proj_drop=0.0,
        mlp_drop=0.0,
        ln_order=ln_order,
        drop_path=0.0,
        layer_scale=None,
        include_last=include_last,
        norm_eps=1e-6,
    ).eval()


def test_lca_official_equals_full_attention_last_token() -> None:
    """Official LCA ('pre', keys include the query) == a pre-LN block over all L tokens, keeping the last."""
    lca = make_lca("pre", include_last=True)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        z = x + lca.attn(lca.norm1(x))
        z = z + lca.feedforward(lca.norm2(z))
        torch.testing.assert_close(lca(x), z[:, -1])


def test_lca_cv_keys_exclude_last_token() -> None:
    """cv LCA: keys/values are c_1..c_{L-1}. If they are all equal to c, attention returns proj(v(c))."""
    lca = make_lca("post", include_last=False)
    c = torch.randn(1, 1, 8).expand(2, 4, 8)
    x = torch.cat([c, torch.randn(2, 1, 8)], dim=1)  # last token = query
    with torch.no_grad():
        v = F.linear(c[:, :1], lca.attn.qkv.weight[16:], lca.attn.qkv.bias[16:])
        a = lca.attn.proj(v)  # (B, 1, d)
        y = lca.norm1(x[:, -1:] + a)
        expected = lca.norm2(y + lca.feedforward(y))[:, 0]
        torch.testing.assert_close(lca(x), expected)


@pytest.mark.parametrize("ln_order", ["pre", "post"])
def test_lca_residual_comes_from_raw_query(ln_order: str) -> None:
    lca = make_lca(ln_order, include_last=False)
    with torch.no_grad():
        for lin in (lca.attn.proj, lca.feedforward.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
        x = torch.randn(2, 4, 8) * 3 + 1
        out = lca(x)
    q = x[:, -1]
    expected = q if ln_order == "pre" else lca.norm2(lca.norm1(q))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("ln_order", ["pre", "post"])
def test_lca_receives_per_block_class_tokens(ln_order: str) -> None:
    model = tiny(ln_order=ln_order, num_encoder_blocks=3).eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        blk.register_forward_hook(lambda m, i, o, k=f"b{j}": seen.__setitem__(k, o))
        for j, blk in enumerate(model.encoder.blocks)
    ]
    hooks.append(model.lca.register_forward_hook(lambda m, i, o: seen.__setitem__("lca", i[0])))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen["lca"].shape == (2, 3, 16)
    for j in range(3):
        torch.testing.assert_close(seen["lca"][:, j], seen[f"b{j}"][:, 0])


# ------------------------------------------------------------------------------------ stochastic depth
def test_update_stochastic_depth_rate() -> None:
    model = tiny(
        num_encoder_blocks=3, stochastic_depth=True, stochastic_depth_mp=0.2, lca_encoder_stodepth_prob=0.1
    )
    blocks = model.encoder.blocks
    assert [blk.drop_path1.drop_prob for blk in blocks] == pytest.approx([0.0, 0.1, 0.2])
    model.updateStochasticDepthRate(0.05)
    model.updateStochasticDepthRate(0.05)
    assert [blk.drop_path2.drop_prob for blk in blocks] == pytest.approx([0.0, 0.15, 0.3])
    assert isinstance(model.lca.drop_path1, DropPath) and model.lca.drop_path1.drop_prob == pytest.approx(0.1)


# ------------------------------------------------------------------------------------ bad arguments
BAD = [
    (dict(d_model=18, encoder_num_heads=4), "encoder_num_heads"),
    (dict(lca_encoder_num_heads=3), "lca_encoder_num_heads"),
    (dict(ln_order="sandwich"), "ln_order"),
    (dict(lca_encoder_ln_order="residual"), "lca_encoder_ln_order"),
    (dict(leff_depthwise_stride=2), "leff_depthwise_stride"),
    (dict(leff_depthwise_padding=0), "leff_depthwise_padding"),
    (dict(leff_depthwise_kernel=4), "leff_depthwise_kernel"),
    (dict(leff_depthwise_kernel=0), "leff_depthwise_kernel"),
    (dict(leff_expand_ratio=0), "leff_expand_ratio"),
    (dict(patchify_technique="fourier"), "patchify_technique"),
    (dict(dropout=1.5), "dropout"),
    (dict(encoder_attention_dropout=-0.1), "encoder_attention_dropout"),
    (dict(lca_encoder_stodepth_prob=1.0), "lca_encoder_stodepth_prob"),
    (dict(stochastic_depth=True), "stochastic_depth_mp"),
    (dict(layer_scale=-1.0), "layer_scale"),
    (dict(lca_encoder_layer_scale=0.0), "lca_encoder_layer_scale"),
    (dict(lca_encoder_expansion_ratio=0), "lca_encoder_expansion_ratio"),
    (dict(classifier_mlp_d=0), "classifier_mlp_d"),
    (dict(i2t_out_channels=0), "i2t_out_channels"),
    (dict(i2t_conv_stride=0), "i2t_conv_stride"),
    (dict(i2t_max_pool_padding=2), "i2t_max_pool_padding"),
    (dict(image_size=8), "image_size"),
    (dict(num_encoder_blocks=1), "num_encoder_blocks"),
    (dict(num_classes=-1), "num_classes"),
    (dict(in_channels=0), "in_channels"),
]


@pytest.mark.parametrize(("kwargs", "name"), BAD, ids=[name for _, name in BAD])
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        tiny(**kwargs)


@pytest.mark.parametrize("layout", ["cv", "official"])
@pytest.mark.parametrize("size", [32, 47, 64, 101])
def test_stem_output_side_matches_its_output(layout: str, size: int) -> None:
    """The token grid (and so ``pos_embed``) is sized from ``output_side``: it must be the map the stem makes.
    The official stem pads both the conv and the pool; the cv one pads neither."""
    model = tiny() if layout == "cv" else create_model("ceit_tiny", image_size=64)
    with torch.no_grad():
        out = model.i2t.eval()(torch.randn(1, 3, size, size))
    assert out.shape[-2:] == (model.i2t.output_side(size),) * 2
    assert model.grid_size == model.i2t.output_side(model.image_size) // model.patch_size


def test_argument_check_takes_exactly_the_constructor_names() -> None:
    """Every checked name is a CeiT parameter; a misspelt one is an error, not a silently skipped check."""
    assert CHECKED_ARGUMENTS.issubset(inspect.signature(CeiT).parameters)
    with pytest.raises(TypeError, match="image_sise"):
        check_ceit_arguments(image_sise=224)
