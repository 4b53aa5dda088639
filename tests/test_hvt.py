"""HPool-ViT / HVT: seed example, token pooling, dual-residual stream, options, errors, presets. The checks
every family shares are tests/test_families.py's."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_models import FAMILIES, tiny_model
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models import create_model, get_preset, list_aliases, list_models, preset_parameter_count
from deploykit.models.hvt import HPool_ViT, PoolStage, TokenPool, hpool_vit, hvt_pool_from_block_width

SEED = dict(
    num_classes=1000,
    d_model=768,
    image_size=192,
    patch_size=16,
    classifier_mlp_d=2048,
    encoder_mlp_d=3072,
    encoder_num_heads=12,
    num_encoder_blocks=12,
)


def tiny(**overrides) -> HPool_ViT:
    """The shared tiny HVT (tests/tiny_models.py): 32 px / patch 4 -> 64 tokens, pooling before blocks 0
    and 2 (64 -> 31 -> 15), d=16, 4 blocks, 5 classes."""
    return tiny_model("hvt", **overrides)


def record_tokens(model: HPool_ViT) -> tuple[list[int], list]:
    """Token count entering each block. ``Block.step`` calls ``forward_dual`` directly in 'residual' mode
    (no block-level hook fires), so the hooks sit on each block's attention, which every order calls."""
    seen: list[int] = []
    handles = [
        blk.attn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
        for blk in model.encoder.blocks
    ]
    return seen, handles


# ----------------------------------------------------------------------------------------- seed example
@pytest.mark.slow
def test_seed_example_token_counts_and_output_shape():
    torch.manual_seed(0)
    model = HPool_ViT(**SEED).eval()
    seen, handles = record_tokens(model)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 192, 192))
    for h in handles:
        h.remove()
    expected = [144, 71, 71, 71, 71, 35, 35, 35, 35, 17, 17, 17]
    assert seen == expected
    assert list(model.num_tokens_per_block) == expected
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_seed_pre_vs_residual_differ_by_final_layernorm():
    with torch.device("meta"):
        pre = sum(p.numel() for p in HPool_ViT(**SEED, ln_order="pre").parameters())
        post = sum(p.numel() for p in HPool_ViT(**SEED, ln_order="post").parameters())
        residual = sum(p.numel() for p in HPool_ViT(**SEED).parameters())
    assert residual - pre == 2 * SEED["d_model"]
    assert pre == post


def test_documented_default_hvt_pool_is_not_mutated():
    default = inspect.signature(HPool_ViT).parameters["hvt_pool"].default
    assert default == [1, 5, 9]
    pool = [9, 1, 5]
    model = tiny(image_size=64, num_encoder_blocks=12, hvt_pool=pool)
    assert pool == [9, 1, 5]  # the caller's list is not sorted in place
    assert model.hvt_pool == (1, 5, 9)
    assert inspect.signature(HPool_ViT).parameters["hvt_pool"].default == [1, 5, 9]


def test_snake_case_alias():
    assert hpool_vit is HPool_ViT


# ----------------------------------------------------------------------------------------- token pooling
def test_token_pool_equals_hand_computed_window_max():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 3)  # 10 tokens -> floor((10 - 3) / 2) + 1 = 4
    out = TokenPool()(x)
    assert out.shape == (2, 4, 3)
    expected = torch.stack([x[:, 2 * j : 2 * j + 3].amax(dim=1) for j in range(4)], dim=1)
    assert torch.equal(out, expected)
    assert TokenPool().output_length(196) == 97


def test_token_pool_equals_two_dimensional_pool_form():
    """The export rewrite target: MaxPool2d((1, 3), (1, 2)) on (B, d, 1, N) gives identical values."""
    x = torch.randn(3, 13, 5)
    pooled2d = nn.MaxPool2d((1, 3), (1, 2))(x.transpose(1, 2).unsqueeze(2)).squeeze(2).transpose(1, 2)
    assert torch.equal(TokenPool()(x), pooled2d)


def test_pool_stage_adds_its_own_position_embedding():
    stage = PoolStage(num_tokens=64, dim=16)
    assert stage.pos_embed.shape == (1, 31, 16)
    x = torch.randn(2, 64, 16)
    assert torch.allclose(stage(x), TokenPool()(x) + stage.pos_embed)


def test_pooling_happens_before_the_listed_blocks():
    model = tiny(hvt_pool=[2, 0]).eval()
    assert model.hvt_pool == (0, 2)
    seen, _ = record_tokens(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [31, 31, 15, 15]
    assert isinstance(model.pools[0], PoolStage) and isinstance(model.pools[2], PoolStage)
    assert isinstance(model.pools[1], nn.Identity) and isinstance(model.pools[3], nn.Identity)
    assert model.pools[0].pos_embed.shape == (1, 31, 16)
    assert model.pools[2].pos_embed.shape == (1, 15, 16)
    assert model.pos_embed.shape == (1, 64, 16)


@pytest.mark.parametrize("ln_order", ["pre", "residual"])
def test_stage_position_embeddings_reach_the_output(ln_order):
    model = tiny(ln_order=ln_order).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.pools[2].pos_embed.add_(torch.randn_like(model.pools[2].pos_embed))
        after = model(x)
    assert not torch.allclose(before, after)


def test_no_pooling_mean_pools_every_token():
    model = tiny(hvt_pool=None).eval()
    assert model.hvt_pool == ()
    assert model.num_tokens_per_block == (64, 64, 64, 64)
    assert not any(isinstance(m, PoolStage) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encoder(model.patch_embed(x) + model.pos_embed)  # (B, 64, d)
        assert torch.allclose(model.forward_features(x), tokens.mean(dim=1), atol=1e-6)
        assert not torch.allclose(model.forward_features(x), tokens[:, 0], atol=1e-3)  # cv read token 0


def test_pool_index_zero_pools_raw_embeddings():
    model = tiny(hvt_pool=[0]).eval()
    seen, _ = record_tokens(model)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [31, 31, 31, 31]


# ----------------------------------------------------------------------------------------- dual residual
def test_residual_stream_reaches_the_output():
    """cv dropped r in 'residual' mode; here the output is mean(x_L + LN_final(r_L))."""
    model = tiny(ln_order="residual").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.encoder.final_norm.weight.mul_(3.0)
        model.encoder.final_norm.bias.add_(0.5)
        after = model(x)
    assert not torch.allclose(before, after)


def test_residual_output_matches_manual_dual_stream():
    model = tiny(ln_order="residual").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = model.patch_embed(x) + model.pos_embed
        s, r = h, h
        for pool, blk in zip(model.pools, model.encoder.blocks):
            s, r = blk.forward_dual(pool(s), pool(r))
        expected = (s + model.encoder.final_norm(r)).mean(dim=1)
        assert torch.allclose(model.forward_features(x), expected, atol=1e-6)


# ----------------------------------------------------------------------------------------- options
def test_official_layout_options():
    """The official layout's switches (trained and evaluated with the other options in test_families.py)."""
    model = tiny(**FAMILIES["hvt"].options["official_layout"])
    assert isinstance(model.head.pre_logits, nn.Identity)
    assert isinstance(model.patch_embed.norm, nn.Identity)
    assert model.norm.eps == 1e-6 and model.encoder.blocks[0].attn.qkv.bias is not None
    assert isinstance(model.patch_embed.proj, nn.Conv2d)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "hvt_pool",
    [[4], [-1], [1, 1], [0, 0, 2], ["1"], [1.0], [True], "1", 3],
    ids=["out_of_range", "negative", "duplicate", "duplicate3", "str_item", "float", "bool", "string", "int"],
)
def test_bad_hvt_pool_raises(hvt_pool):
    with pytest.raises(ConfigError, match="hvt_pool"):
        tiny(hvt_pool=hvt_pool)


def test_pooling_too_few_tokens_raises():
    # 8 px / patch 4 -> 4 tokens -> pool -> 1 token: a second pooling has nothing to pool
    with pytest.raises(ConfigError, match="hvt_pool"):
        tiny(image_size=8, hvt_pool=[0, 1])
    assert tiny(image_size=8, hvt_pool=[0]).num_tokens_per_block == (1, 1, 1, 1)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        (dict(d_model=15), "encoder_num_heads"),
        (dict(image_size=30), "patch_size"),
        (dict(ln_order="sandwich"), "ln_order"),
        (dict(patchify_technique="pixel"), "patchify_technique"),
        (dict(dropout=1.5), "dropout"),
        (dict(encoder_attention_dropout=-0.1), "encoder_attention_dropout"),
        (dict(layer_scale=-1.0), "layer_scale"),
        (dict(stochastic_depth=True), "stochastic_depth_mp"),
        (dict(num_encoder_blocks=0), "num_encoder_blocks"),
        (dict(classifier_mlp_d=0), "classifier_mlp_d"),
        (dict(num_classes=-1), "num_classes"),
    ],
)
def test_bad_arguments_name_the_parameter(overrides, name):
    with pytest.raises(ConfigError, match=name):
        tiny(**overrides)


# ----------------------------------------------------------------------------------------- presets
HVT_PRESETS = list_models("hvt*")


def test_presets_registered():
    assert {"hvt_ti_1", "hvt_s_0", "hvt_s_1", "hvt_s_2", "hvt_s_3", "hvt_s_4"} <= set(HVT_PRESETS)
    assert list_aliases()["hvt"] == "hvt_ti_1"


@pytest.mark.parametrize("name", HVT_PRESETS)
def test_preset_parameter_count_matches_reference(name):
    preset = get_preset(name)
    count = preset_parameter_count(name)
    assert round(count / 1e6, preset.reference_params_decimals) == preset.reference_params_m


@pytest.mark.parametrize(
    ("name", "hvt_pool", "pos_lengths"),
    [
        ("hvt_ti_1", (1,), {"pools.1.pos_embed": 97}),
        ("hvt_s_0", (), {}),
        ("hvt_s_2", (1, 7), {"pools.1.pos_embed": 97, "pools.7.pos_embed": 48}),
        (
            "hvt_s_4",
            (1, 4, 7, 10),
            {
                "pools.1.pos_embed": 97,
                "pools.4.pos_embed": 48,
                "pools.7.pos_embed": 23,
                "pools.10.pos_embed": 11,
            },
        ),
    ],
)
def test_preset_official_layout(name, hvt_pool, pos_lengths):
    with torch.device("meta"):
        model = create_model(name)
    sd = model.state_dict()
    assert model.hvt_pool == hvt_pool
    assert sd["pos_embed"].shape[1] == 196
    assert {k: v.shape[1] for k, v in sd.items() if k.startswith("pools.")} == pos_lengths
    assert isinstance(model.patch_embed.proj, nn.Conv2d) and isinstance(model.patch_embed.norm, nn.Identity)
    assert model.encoder.ln_order == "pre" and isinstance(model.encoder.final_norm, nn.Identity)
    assert model.norm.eps == 1e-6 and model.encoder.blocks[0].norm1.eps == 1e-6
    assert model.encoder.blocks[0].attn.qkv.bias is not None
    assert model.encoder.blocks[0].attn.head_dim == 64
    assert isinstance(model.head.pre_logits, nn.Identity)
    assert model.input_size == (3, 224, 224)


def test_official_pool_block_width_mapping():
    assert hvt_pool_from_block_width(12) == [1]
    assert hvt_pool_from_block_width(6) == [1, 7]
    assert hvt_pool_from_block_width(4) == [1, 5, 9]
    assert hvt_pool_from_block_width(3) == [1, 4, 7, 10]
    with pytest.raises(ConfigError, match="pool_block_width"):
        hvt_pool_from_block_width(1)  # would pool after the last block


@pytest.mark.slow
def test_hvt_ti_1_forward():
    torch.manual_seed(0)
    model = create_model("hvt").eval()
    seen, _ = record_tokens(model)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000)
    assert seen == [196] + [97] * 11
