"""CvT: config validation, official semantics (conv projections, D**-0.5 scale, cls handling, head),
presets, any-resolution inputs, stochastic depth schedule. The checks every family shares are
tests/test_families.py's."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES
from torch import nn
from torch.nn import functional as F

from deploykit.core.errors import ConfigError
from deploykit.models import count_parameters, create_model, get_preset, list_models, preset_parameter_count
from deploykit.models.cvt import ConvAttention, CvT, CvTConfig
from deploykit.models.layers import DropPath, QuickGELU

SEED_KWARGS = dict(
    num_stages=3,
    patch_size=(7, 3, 3),
    patch_stride=(4, 2, 2),
    patch_padding=(2, 1, 1),
    dim_embed=(64, 192, 384),
    num_heads=(1, 3, 6),
    depth=(1, 2, 10),
)


def tiny_config(**overrides: object) -> CvTConfig:
    """The shared tiny CvT (tests/tiny_models.py): two stages, widths 16/32, 32 px, stage grids 8x8, 4x4."""
    return CvTConfig(**{**FAMILIES["cvt"].kwargs, **overrides})


def tiny_model(**overrides: object) -> CvT:
    torch.manual_seed(0)
    return CvT(tiny_config(**overrides))


# --------------------------------------------------------------------------------------------- seed + presets
@pytest.mark.slow
def test_seed_example_builds_and_classifies_at_224():
    torch.manual_seed(0)
    model = CvT(CvTConfig(**SEED_KWARGS)).eval()
    assert isinstance(model.stage2.blocks[0].mlp.act, nn.GELU)  # a bare config keeps exact GELU
    assert model.stage2.cls_token is not None and model.stage0.cls_token is None
    with torch.no_grad():
        for batch in (1, 3):
            out = model(torch.randn(batch, 3, 224, 224))
            assert out.shape == (batch, 1000)
            assert torch.isfinite(out).all()


@pytest.mark.slow
def test_cvt13_preset_full_size_forward():
    model = create_model("cvt_13").eval()
    assert isinstance(model.stage1.blocks[0].mlp.act, QuickGELU)
    assert model.norm.eps == 1e-5
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        maps = []
        h = x
        for i in range(3):
            h, _ = getattr(model, f"stage{i}")(h)
            maps.append(tuple(h.shape[1:]))
        assert maps == [(64, 56, 56), (192, 28, 28), (384, 14, 14)]  # the CvT paper's stage shapes
        out3 = model(x)
        out1 = model(x[:1])
    assert out3.shape == (3, 1000) and out1.shape == (1, 1000)  # B=1 keeps its batch dim (no squeeze)
    torch.testing.assert_close(out1, out3[:1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list_models("cvt*"))
def test_preset_parameter_counts_match_reference(name):
    preset = get_preset(name)
    measured = preset_parameter_count(name) / 1e6
    assert round(measured, preset.reference_params_decimals) == preset.reference_params_m


def test_presets_and_alias():
    assert set(list_models("cvt*")) == {"cvt_13", "cvt_21", "cvt_w24"}
    assert get_preset("cvt").name == "cvt_13"
    with torch.device("meta"):
        w24 = create_model("cvt_w24")
        c21 = create_model("cvt_21")
    assert w24.input_size == (3, 384, 384)
    assert [len(getattr(c21, f"stage{i}").blocks) for i in range(3)] == [1, 4, 16]
    rates = [b.drop_path.drop_prob for b in w24.stage2.blocks]
    assert rates[-1] == pytest.approx(0.3) and rates[0] == 0.0
    data = create_model("cvt_13", num_classes=10).data_config
    assert data.mean == (0.485, 0.456, 0.406) and data.interpolation == "bicubic" and data.crop_pct == 0.875


def test_official_state_dict_layout():
    with torch.device("meta"):
        keys = set(create_model("cvt_13").state_dict())
    assert len(keys) == 459  # the HF / official key count for CvT-13
    for key in (
        "stage0.patch_embed.proj.weight",
        "stage0.patch_embed.norm.bias",
        "stage2.cls_token",
        "stage2.blocks.9.norm1.weight",
        "stage1.blocks.1.attn.conv_proj_q.conv.weight",
        "stage1.blocks.1.attn.conv_proj_v.bn.running_var",
        "stage2.blocks.0.attn.proj_k.bias",
        "stage2.blocks.0.attn.proj.weight",
        "stage2.blocks.0.mlp.fc2.weight",
        "norm.weight",
        "head.bias",
    ):
        assert key in keys, key
    assert "stage0.cls_token" not in keys


def test_create_model_overrides_and_features_head():
    torch.manual_seed(0)
    model = create_model("cvt_13", num_classes=0, depth=(1, 1, 1)).eval()
    assert isinstance(model.head, nn.Identity)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 384)


# --------------------------------------------------------------------------------------------- options
METHODS = [("dw_bn", "dw_bn"), ("avg", "avg"), ("linear", "linear"), ("lin", "avg"), ("avg", "dw_bn")]


@pytest.mark.parametrize("methods", METHODS)
def test_qkv_projection_layout_per_method(methods):
    """'avg' keeps q unprojected, 'linear' has no spatial op at all (training every method and cls-token
    combination is tests/test_families.py's)."""
    model = tiny_model(qkv_proj_method=methods)
    for i, method in enumerate(model.config.qkv_proj_method):
        attn = getattr(model, f"stage{i}").blocks[0].attn
        assert isinstance(
            attn.conv_proj_k.conv, {"dw_bn": nn.Conv2d, "avg": nn.AvgPool2d, "linear": nn.Identity}[method]
        )
        assert isinstance(attn.conv_proj_q.conv, nn.Conv2d if method == "dw_bn" else nn.Identity)


def test_mean_pool_head_without_final_cls():
    model = tiny_model(cls_token=(True, False)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, _ = model.stage0(x)
        h, cls = model.stage1(h)
        assert cls is None
        expected = model.head(model.norm(h.flatten(2).transpose(1, 2)).mean(dim=1))
        torch.testing.assert_close(model(x), expected)


def test_cls_head_reads_last_stage_cls_token():
    model = tiny_model(cls_token=(False, True)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, _ = model.stage0(x)
        _, cls = model.stage1(h)
        torch.testing.assert_close(model(x), model.head(model.norm(cls[:, 0])))


@pytest.mark.parametrize("size", [(160, 160), (40, 56)])
def test_inputs_of_other_sizes(size):
    model = tiny_model(qkv_proj_method=("avg", "dw_bn")).eval()
    with torch.no_grad():
        h, _ = model.stage0(torch.randn(1, 3, *size))
        assert h.shape[-2:] == (size[0] // 4, size[1] // 4)
        assert model(torch.randn(3, 3, *size)).shape == (3, 5)


def test_cvt13_at_160():
    torch.manual_seed(0)
    model = create_model("cvt_13").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 160, 160)).shape == (1, 1000)


# --------------------------------------------------------------------------------------------- attention math
def _reference_attention(attn: ConvAttention, x: torch.Tensor, H: int, W: int, cls: bool) -> torch.Tensor:
    """Official cls_cvt math written out with functional ops (eval-mode BN)."""
    B, _, C = x.shape
    c, t = (x[:, :1], x[:, 1:]) if cls else (None, x)
    fmap = t.transpose(1, 2).reshape(B, C, H, W)

    def dw_bn(proj, stride):
        y = F.conv2d(fmap, proj.conv.weight, None, stride, 1, groups=C)
        bn = proj.bn
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        y = y.flatten(2).transpose(1, 2)
        return torch.cat([c, y], 1) if cls else y

    q = F.linear(dw_bn(attn.conv_proj_q, 1), attn.proj_q.weight, attn.proj_q.bias)
    k = F.linear(dw_bn(attn.conv_proj_k, 2), attn.proj_k.weight, attn.proj_k.bias)
    v = F.linear(dw_bn(attn.conv_proj_v, 2), attn.proj_v.weight, attn.proj_v.bias)
    h = attn.num_heads
    q, k, v = (z.reshape(B, z.shape[1], h, C // h).permute(0, 2, 1, 3) for z in (q, k, v))
    scores = torch.einsum("bhld,bhtd->bhlt", q, k) * C**-0.5  # full width, not head dim
    out = torch.einsum("bhlt,bhtd->bhld", scores.softmax(-1), v)
    return F.linear(out.permute(0, 2, 1, 3).reshape(B, -1, C), attn.proj.weight, attn.proj.bias)


def _attention_kwargs(*, heads: int, method: str, with_cls_token: bool) -> dict:
    """ConvAttention keywords of the official layout: k/v conv 3x3 stride 2, q stride 1, padding 1."""
    return dict(
        num_heads=heads,
        qkv_bias=True,
        attn_drop=0.0,
        proj_drop=0.0,
        method=method,
        kernel=3,
        stride_kv=2,
        stride_q=1,
        padding_kv=1,
        padding_q=1,
        with_cls_token=with_cls_token,
    )


@pytest.mark.parametrize("cls", [False, True])
def test_attention_matches_reference_with_full_width_scale(cls):
    torch.manual_seed(0)
    C, heads, H, W = 24, 3, 6, 5
    attn = ConvAttention(C, **_attention_kwargs(heads=heads, method="dw_bn", with_cls_token=cls)).eval()
    for proj in (attn.conv_proj_q, attn.conv_proj_k, attn.conv_proj_v):  # non-trivial BN statistics
        proj.bn.running_mean.normal_()
        proj.bn.running_var.uniform_(0.5, 2.0)
        proj.bn.weight.data.normal_()
        proj.bn.bias.data.normal_()
    x = torch.randn(2, int(cls) + H * W, C)
    with torch.no_grad():
        out = attn(x, H, W)
        torch.testing.assert_close(out, _reference_attention(attn, x, H, W, cls), atol=1e-5, rtol=1e-5)
        assert attn.scale == C**-0.5
        attn.scale = (C // heads) ** -0.5  # a head-dim scale would give a different result
        assert not torch.allclose(attn(x, H, W), out, atol=1e-4)


def test_avg_projection_uses_ceil_mode():
    attn = ConvAttention(8, **_attention_kwargs(heads=2, method="avg", with_cls_token=False))
    fmap = torch.randn(1, 8, 8, 8)
    assert attn.conv_proj_k(fmap).shape == (1, 25, 8)  # ceil((8+2-3)/2)+1 = 5 per side (floor would give 4)
    assert attn.conv_proj_q(fmap).shape == (1, 64, 8)  # q is not pooled
    assert attn(torch.randn(2, 64, 8), 8, 8).shape == (2, 64, 8)


# --------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(depth=(1, 2, 3)), "depth"),
        (dict(kernel_qkv=(3,)), "kernel_qkv"),
        (dict(dim_embed=(16, 30)), "dim_embed[1]"),
        (dict(qkv_proj_method=("dw_bn", "conv")), "qkv_proj_method[1]"),
        (dict(patch_size=(0, 3)), "patch_size[0]"),
        (dict(patch_stride=(4, -2)), "patch_stride[1]"),
        (dict(patch_padding=(-1, 1)), "patch_padding[0]"),
        (dict(num_heads=(0, 4)), "num_heads[0]"),
        (dict(depth=(1, 0)), "depth[1]"),
        (dict(stride_kv=(2, 0)), "stride_kv[1]"),
        (dict(drop_path_rate=(0.0, 1.0)), "drop_path_rate[1]"),
        (dict(attn_drop_rate=(-0.1, 0.0)), "attn_drop_rate[0]"),
        (dict(cls_token=(0, 1)), "cls_token[0]"),
        (dict(mlp_ratio=(0.0, 2.0)), "mlp_ratio[0]"),
        (dict(qkv_proj_method=("avg", "avg"), padding_kv=(2, 1)), "padding_kv[0]"),
        (dict(num_stages=0), "num_stages"),
        (dict(num_classes=-1), "num_classes"),
        (dict(in_channels=0), "in_channels"),
        (dict(image_size=0), "image_size"),
        (dict(act_layer="gelu"), "act_layer"),
    ],
)
def test_config_validation(overrides, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")) as info:
        tiny_config(**overrides)
    assert isinstance(info.value, ValueError)


def test_default_three_stage_fields_reject_two_stages():
    with pytest.raises(ConfigError, match="mlp_ratio must have length num_stages=2"):
        CvTConfig(
            num_stages=2,
            patch_size=(7, 3),
            patch_stride=(4, 2),
            patch_padding=(2, 1),
            dim_embed=(16, 32),
            num_heads=(1, 2),
            depth=(1, 1),
        )


def test_config_broadcast_alias_and_revalidation():
    cfg = tiny_config(qkv_proj_method="lin", stride_kv=1, drop_rate=0.1, cls_token=True)
    assert cfg.qkv_proj_method == ("linear", "linear")
    assert cfg.stride_kv == (1, 1) and cfg.drop_rate == (0.1, 0.1) and cfg.cls_token == (True, True)
    cfg.num_heads = (3, 4)  # mutated after construction: CvT re-validates
    with pytest.raises(ConfigError, match=r"dim_embed\[0\]"):
        CvT(cfg)
    with pytest.raises(ConfigError, match="config"):
        CvT(dict(num_stages=1))


# --------------------------------------------------------------------------------------------- behaviour
def test_stochastic_depth_schedule_and_update():
    model = tiny_model(depth=(2, 4), drop_path_rate=(0.0, 0.3))
    assert not any(isinstance(m, DropPath) for m in model.stage0.modules())  # rate-0 stage: no DropPath
    rates = [blk.drop_path.drop_prob for blk in model.stage1.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])  # linspace(0, 0.3, 4)
    model.updateStochasticDepthRate(k=0.06)
    model.updateStochasticDepthRate(k=0.06)  # cumulative: + 2 * j * 0.06 / 3
    rates = [blk.drop_path.drop_prob for blk in model.stage1.blocks]
    assert rates == pytest.approx([0.0, 0.14, 0.28, 0.42])
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_drop_path_active_in_train_only():
    model = tiny_model(depth=(1, 3), drop_path_rate=(0.0, 0.9))
    x = torch.randn(4, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)  # random branch dropping differs between draws
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_torch_export_with_dynamic_batch_has_no_einsum():
    model = tiny_model(qkv_proj_method=("avg", "dw_bn")).eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("einsum" in t for t in targets)
    x5 = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x5), model(x5), atol=1e-5, rtol=1e-5)
