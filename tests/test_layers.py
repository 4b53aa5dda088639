"""Shared blocks: ln_order wiring, stochastic-depth schedule and its update, patch embedding equivalence; the
keyword-only arguments of every block constructor."""

import inspect

import pytest
import torch
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models import DeepViT, Preset, VisionModel
from deploykit.models.ceit import LCA, Image2Tokens, LeFF
from deploykit.models.convit import GPSA
from deploykit.models.cvt import ConvAttention, ConvEmbed, ConvProjection, ConvTransformerBlock, CvTStage
from deploykit.models.deepvit import CNNStem
from deploykit.models.layers import (
    Attention,
    Block,
    ClassifierHead,
    DropPath,
    Encoder,
    Mlp,
    PatchEmbed,
    drop_path_rates,
    make_drop_path,
)
from deploykit.models.pretrained import SourceFormat
from deploykit.models.weights import WeightsInfo


def _block(ln_order, dim=16):
    return Block(dim, Attention(dim, 4), Mlp(dim, 32), ln_order=ln_order).eval()


@pytest.mark.parametrize("ln_order", ["pre", "post"])
def test_block_matches_written_formula(ln_order):
    blk = _block(ln_order)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        A, F, n1, n2 = blk.attn, blk.mlp, blk.norm1, blk.norm2
        if ln_order == "pre":
            y = x + A(n1(x))
            want = y + F(n2(y))
        else:
            y = n1(x + A(x))
            want = n2(y + F(y))
        torch.testing.assert_close(blk(x), want)


def test_dual_residual_encoder_matches_formula():
    blocks = [_block("residual") for _ in range(2)]
    enc = Encoder(blocks, 16, ln_order="residual").eval()
    nn.init.normal_(enc.final_norm.weight)
    x0 = torch.randn(2, 5, 16)
    with torch.no_grad():
        x, r = x0, x0
        for b in blocks:
            a = b.attn(x)
            x = b.norm1(x + a)
            r = r + a
            m = b.mlp(x)
            x = b.norm2(x + m)
            r = r + m
        torch.testing.assert_close(enc(x0), x + enc.final_norm(r))


def test_drop_path_schedule_is_linear_ramp():
    assert drop_path_rates(True, 0.1, 5) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert drop_path_rates(False, None, 3) == [None, None, None]
    with pytest.raises(ConfigError, match="stochastic_depth_mp"):
        drop_path_rates(True, None, 3)
    with pytest.raises(ConfigError, match="stochastic_depth_mp"):
        drop_path_rates(True, 1.5, 3)


def _rates(model):
    return {m.block_index: m.drop_prob for m in model.modules() if isinstance(m, DropPath)}


def test_update_stochastic_depth_rate_matches_documented_formula():
    # the documented updateStochasticDepthRate example: 32 blocks, mp 0.1, k 0.05: last block 0.10 -> 0.15, block 1 0.0032 -> 0.0048
    model = DeepViT(10, 32, 32, 16, None, 32, 2, 32, stochastic_depth=True, stochastic_depth_mp=0.1)
    before = _rates(model)
    assert before[31] == pytest.approx(0.10) and before[1] == pytest.approx(0.1 / 31)
    model.updateStochasticDepthRate(0.05)
    after = _rates(model)
    assert after[31] == pytest.approx(0.15) and after[1] == pytest.approx(0.0048, abs=1e-4)
    for i in range(32):
        assert after[i] == pytest.approx(before[i] + i * 0.05 / 31)
    model.update_stochastic_depth_rate(0.05)  # cumulative
    assert _rates(model)[31] == pytest.approx(0.20)


def test_update_without_stochastic_depth_is_noop():
    model = DeepViT(10, 32, 32, 16, None, 32, 2, 4)
    assert not _rates(model)
    model.updateStochasticDepthRate(0.05)
    assert not _rates(model)


def test_drop_path_behaviour():
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    dp.train()
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean().item()
    assert 0.45 < kept < 0.55
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
    dp.eval()
    torch.testing.assert_close(dp(x), x)
    dp.drop_prob = 1.2  # the cumulative update has no clamp: an always-dropped branch, never NaN
    dp.train()
    assert torch.equal(dp(x), torch.zeros_like(x))


def test_linear_and_conv_patchify_are_the_same_map():
    lin = PatchEmbed(patch_size=4, in_channels=3, dim=8, technique="linear", norm=False)
    conv = PatchEmbed(patch_size=4, in_channels=3, dim=8, technique="convolutional", norm=False)
    with torch.no_grad():
        conv.proj.weight.copy_(lin.proj.weight.reshape(8, 3, 4, 4))
        conv.proj.bias.copy_(lin.proj.bias)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(lin(x), conv(x))
    assert "proj.weight" in conv.state_dict()  # registered, trainable (not a per-call random conv)
    assert conv.proj.weight.requires_grad


def test_attention_context_matches_full_attention_rows():
    attn = Attention(16, 4, qkv_bias=True).eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        full = attn(x)
        last = attn(x[:, -1:], context=x)
    torch.testing.assert_close(last, full[:, -1:])


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ConfigError, match="ln_order"):
        _block("sandwich")
    with pytest.raises(ConfigError, match="patchify_technique"):
        PatchEmbed(patch_size=4, in_channels=3, dim=8, technique="pixelshuffle")
    with pytest.raises(ConfigError, match="encoder_num_heads"):
        Attention(10, 3)


def positional_parameters(fn) -> list[str]:
    """Names ``fn`` accepts by position (``self``/``cls`` excluded)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


@pytest.mark.parametrize(
    "fn, positional",
    [
        (Attention, ["dim", "num_heads"]),
        (Block, ["dim", "attn", "mlp"]),
        (Encoder, ["blocks", "dim"]),
        (Encoder.build, []),
        (Mlp, ["dim", "hidden_dim"]),
        (ClassifierHead, ["dim", "num_classes"]),
        (PatchEmbed, []),
        (DropPath, ["drop_prob"]),
        (make_drop_path, ["rate"]),
        (VisionModel, []),
        (Preset, []),
        (WeightsInfo, []),
        (SourceFormat, []),
        (ConvEmbed, []),
        (ConvProjection, ["dim", "method"]),
        (ConvAttention, ["dim"]),
        (ConvTransformerBlock, ["dim", "attn", "mlp"]),
        (CvTStage, ["cfg", "i"]),
        (Image2Tokens, []),
        (LeFF, ["dim"]),
        (LCA, ["dim"]),
        (GPSA, ["dim", "num_heads"]),
        (CNNStem, []),
    ],
    ids=lambda v: getattr(v, "__qualname__", None),
)
def test_sizes_and_rates_are_keyword_only(fn, positional):
    """Only the leading, unmistakable arguments go by position, so a call like ``ConvAttention(dim, kernel,
    stride_kv, stride_q, padding_kv, padding_q)`` with two numbers swapped cannot be written."""
    assert positional_parameters(fn) == positional
