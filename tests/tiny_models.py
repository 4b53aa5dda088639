"""One tiny configuration per registered family, declared once.

Each is the family's own constructor (the builder of its registry alias, ``get_preset(family).builder``)
at 32-px inputs and 5 classes, with what the shared checks of ``tests/test_families.py`` need: the option
variants every train/eval check runs over, the arguments that turn stochastic depth on and off, and a
headless (features) model. The per-family test modules build their family's tiny model from here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from deploykit.models import get_preset

IMAGE_SIZE = 32
NUM_CLASSES = 5


@dataclass(frozen=True, kw_only=True)
class TinyFamily:
    """``kwargs``: the family constructor's tiny arguments; ``options``: named variants (constructor
    arguments on top of ``kwargs``) that the shared train/eval checks run; ``stochastic`` /
    ``no_stochastic``: stochastic depth on (a ramp up to a non-zero rate) / off; ``headless``: a model
    whose output is its pooled features."""

    kwargs: Mapping[str, Any]
    options: Mapping[str, Mapping[str, Any]]
    stochastic: Mapping[str, Any]
    no_stochastic: Mapping[str, Any] = field(default_factory=dict)
    headless: Mapping[str, Any] = field(default_factory=lambda: {"num_classes": 0, "classifier_mlp_d": None})

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


def _grid(common: Mapping[str, Any] | None = None, **axes: list) -> dict[str, dict[str, Any]]:
    """Every combination of ``axes`` (name -> values), each with ``common``: ``{"pre-linear": {...}}``."""
    names = list(axes)
    return {
        "-".join(str(v) for v in values): {**(common or {}), **dict(zip(names, values))}
        for values in itertools.product(*axes.values())
    }


_VIT_DROPOUTS = dict(
    dropout=0.1, encoder_dropout=0.1, encoder_attention_dropout=0.1, encoder_projection_dropout=0.1
)
_VIT_ORDERS = dict(ln_order=["residual", "pre", "post"], patchify_technique=["linear", "convolutional"])

_CEIT_OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "pre": dict(ln_order="pre"),
    "residual": dict(ln_order="residual"),
    "conv_patchify": dict(patchify_technique="convolutional"),
    "conv_alias": dict(patchify_technique="conv"),
    "not_separable": dict(leff_depthwise_separable=False),
    "leff_k5": dict(leff_depthwise_kernel=5, leff_depthwise_padding=2, leff_expand_ratio=2),
    "stochastic_depth": dict(stochastic_depth=True, stochastic_depth_mp=0.3),
    "layer_scale": dict(layer_scale=0.1),
    "lca_pre": dict(lca_encoder_ln_order="pre"),
    "lca_extras": dict(
        lca_encoder_stodepth_prob=0.2,
        lca_encoder_layer_scale=0.5,
        lca_encoder_qkv_bias=True,
        lca_encoder_expansion_ratio=2,
    ),
    "dropouts": dict(
        **_VIT_DROPOUTS,
        lca_encoder_dropout=0.1,
        lca_encoder_attention_dropout=0.1,
        lca_encoder_projection_dropout=0.1,
    ),
    "linear_head": dict(classifier_mlp_d=None),
    "official_layout": dict(
        i2t_conv_padding=3,
        i2t_conv_bias=False,
        i2t_max_pool_padding=1,
        patchify_technique="convolutional",
        embed_norm=False,
        qkv_bias=True,
        norm_eps=1e-6,
        leff_out_act=False,
        leff_depthwise_separable=False,
        lca_layer_embed=True,
        lca_include_last=True,
        final_norm=True,
        ln_order="pre",
        lca_encoder_ln_order="pre",
        lca_encoder_qkv_bias=True,
        classifier_mlp_d=None,
        num_encoder_blocks=1,
    ),
}

_CVT_METHODS = [("dw_bn", "dw_bn"), ("avg", "avg"), ("linear", "linear"), ("lin", "avg"), ("avg", "dw_bn")]
_CVT_CLS = [(False, False), (False, True), (True, True), (True, False)]
_CVT_OPTIONS = {
    f"{'+'.join(methods)}-cls{''.join(str(int(c)) for c in cls)}": dict(
        qkv_proj_method=methods, cls_token=cls, drop_rate=(0.1, 0.1), attn_drop_rate=(0.1, 0.1)
    )
    for methods, cls in itertools.product(_CVT_METHODS, _CVT_CLS)
}

FAMILIES: dict[str, TinyFamily] = {
    "convit": TinyFamily(
        kwargs=dict(
            d_model=32,
            image_size=IMAGE_SIZE,
            patch_size=8,
            classifier_mlp_d=16,
            encoder_mlp_d=64,
            encoder_num_heads=4,
            num_encoder_blocks=4,
            num_gated_blocks=2,
            num_classes=NUM_CLASSES,
        ),
        options=_grid(
            dict(
                **_VIT_DROPOUTS,
                stochastic_depth=True,
                stochastic_depth_mp=0.1,
                layer_scale=0.1,
                locality_strength=2.0,
                locality_distance_method="adaptive",
                d_pos=5,
            ),
            **_VIT_ORDERS,
        ),
        stochastic=dict(stochastic_depth=True, stochastic_depth_mp=0.3),
    ),
    # 32 px -> stem conv7/2 (13) -> maxpool3/2 (6) -> patch 2 -> 3x3 tokens
    "ceit": TinyFamily(
        kwargs=dict(
            image_size=IMAGE_SIZE,
            d_model=16,
            patch_size=2,
            encoder_num_heads=2,
            num_encoder_blocks=2,
            classifier_mlp_d=8,
            i2t_out_channels=4,
            lca_encoder_num_heads=2,
            num_classes=NUM_CLASSES,
        ),
        options=_CEIT_OPTIONS,
        stochastic=dict(stochastic_depth=True, stochastic_depth_mp=0.2, lca_encoder_stodepth_prob=0.1),
    ),
    # two stages, widths 16/32: stage grids 8x8 then 4x4
    "cvt": TinyFamily(
        kwargs=dict(
            num_stages=2,
            patch_size=(7, 3),
            patch_stride=(4, 2),
            patch_padding=(2, 1),
            dim_embed=(16, 32),
            num_heads=(2, 4),
            depth=(1, 2),
            num_classes=NUM_CLASSES,
            mlp_ratio=(2.0, 2.0),
            attn_drop_rate=(0.0, 0.0),
            drop_rate=(0.0, 0.0),
            drop_path_rate=(0.0, 0.2),
            qkv_bias=(True, True),
            cls_token=(False, True),
            pos_embed=(False, False),
            qkv_proj_method=("dw_bn", "dw_bn"),
            kernel_qkv=(3, 3),
            padding_q=(1, 1),
            stride_q=(1, 1),
            padding_kv=(1, 1),
            stride_kv=(2, 2),
            image_size=IMAGE_SIZE,
        ),
        options=_CVT_OPTIONS,
        stochastic=dict(drop_path_rate=(0.0, 0.3)),
        no_stochastic=dict(drop_path_rate=(0.0, 0.0)),
        headless=dict(num_classes=0),
    ),
    "deepvit": TinyFamily(
        kwargs=dict(
            num_classes=NUM_CLASSES,
            d_model=24,
            image_size=IMAGE_SIZE,
            patch_size=8,
            classifier_mlp_d=16,
            encoder_mlp_d=48,
            encoder_num_heads=3,
            num_encoder_blocks=3,
        ),
        options=_grid(
            dict(**_VIT_DROPOUTS, stochastic_depth=True, stochastic_depth_mp=0.2, layer_scale=1e-4),
            **_VIT_ORDERS,
            re_attention=[False, True],
        ),
        stochastic=dict(stochastic_depth=True, stochastic_depth_mp=0.2),
    ),
    # 32 px / patch 4 -> 64 tokens; pooling before blocks 0 and 2: 64 -> 31 -> 15
    "hvt": TinyFamily(
        kwargs=dict(
            num_classes=NUM_CLASSES,
            d_model=16,
            image_size=IMAGE_SIZE,
            patch_size=4,
            classifier_mlp_d=8,
            encoder_mlp_d=32,
            encoder_num_heads=2,
            num_encoder_blocks=4,
            hvt_pool=[0, 2],
        ),
        options={
            **_grid(
                dict(**_VIT_DROPOUTS, stochastic_depth=True, stochastic_depth_mp=0.1, layer_scale=0.1),
                **_VIT_ORDERS,
            ),
            "official_layout": dict(
                classifier_mlp_d=None,
                ln_order="pre",
                embed_norm=False,
                qkv_bias=True,
                norm_eps=1e-6,
                final_norm=True,
                patchify_technique="convolutional",
            ),
        },
        stochastic=dict(stochastic_depth=True, stochastic_depth_mp=0.1),
    ),
}


def tiny_model(family: str, **overrides: Any) -> nn.Module:
    """The family's tiny model (seeded), with ``overrides`` on top of its tiny arguments."""
    torch.manual_seed(0)
    return get_preset(family).builder(**{**FAMILIES[family].kwargs, **overrides})


def randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Every float tensor moved off its init (so swapped norms, biases or BN statistics cannot hide)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()
