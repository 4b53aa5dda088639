"""CeiT: Image-to-Tokens stem, locally-enhanced feed-forward (LeFF) and layer-wise class-token attention (LCA).

Paper: Yuan et al., "Incorporating Convolution Designs into Visual Transformers", ICCV 2021, arXiv 2103.11816.
Reference implementation: coeusguo/ceit ``ceit_model.py`` (presets below reproduce its layout: padded
conv7/2 + BN + maxpool stem, conv4 patch projection, absolute position embedding, pre-LN blocks with LeFF,
``pos_layer_embed`` over the per-block class tokens, one LCA block, final norm, Linear head).
Documented API: ``cv.backbones.CeiT.model.CeiT`` (shivam7569/cv), without that library's defects.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from deploykit.core.errors import ConfigError
from deploykit.models.base import InputShapeError, VisionModel
from deploykit.models.ceit_checks import LCA_LN_ORDERS, check_ceit_arguments
from deploykit.models.layers import (
    Attention,
    ClassifierHead,
    DropPath,
    Encoder,
    Mlp,
    PatchEmbed,
    make_layer_scale,
)
from deploykit.models.layers.checks import choice
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys


def _conv_out(size: int, *, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Image2Tokens(nn.Module):
    """I2T stem ``Conv2d -> BatchNorm2d -> MaxPool2d`` (no activation): a low-level feature map."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        bias: bool,
        pool_kernel_size: int,
        pool_stride: int,
        pool_padding: int,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(pool_kernel_size, stride=pool_stride, padding=pool_padding)

    def output_side(self, size: int) -> int:
        """Side of the feature map for a ``size x size`` input (conv, then max-pool)."""
        conv, pool = self.conv, self.pool
        side = _conv_out(size, kernel=conv.kernel_size[0], stride=conv.stride[0], padding=conv.padding[0])
        return _conv_out(side, kernel=pool.kernel_size, stride=pool.stride, padding=pool.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.bn(self.conv(x)))  # (B, C', H', W')


class LeFF(nn.Module):
    """Locally-enhanced feed-forward on ``(B, 1 + N, d)``; the class token bypasses it unchanged.

    Patch tokens become the map ``(B, d, h, w)`` (row-major grid, ``h = w = sqrt(N)``: static under tracing)
    and stay in NCHW through ``conv1 (1x1, d -> e*d) -> bn1 -> GELU -> conv2 (depthwise k x k)
    [-> pointwise (1x1, cv "separable" option)] -> bn2 -> GELU -> drop -> conv3 (1x1, e*d -> d) -> bn3
    [-> GELU (cv layout; the official code has none)]``. All BatchNorms are BatchNorm2d over channels, so
    the module does not depend on the number of tokens (the cv BatchNorm1d over positions did).
    """

    def __init__(
        self,
        dim: int,
        *,
        expand_ratio: int,
        kernel_size: int,
        padding: int,
        separable: bool,
        out_act: bool,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = expand_ratio * dim
        self.conv1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, kernel_size, padding=padding, groups=hidden)
        self.pointwise = nn.Conv2d(hidden, hidden, kernel_size=1) if separable else nn.Identity()
        self.bn2 = nn.BatchNorm2d(hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.conv3 = nn.Conv2d(hidden, dim, kernel_size=1)
        self.bn3 = nn.BatchNorm2d(dim)
        self.out_act = nn.GELU() if out_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N1, C = x.shape
        cls, tokens = x[:, :1], x[:, 1:]
        side = math.isqrt(N1 - 1)
        t = tokens.transpose(1, 2).reshape(B, C, side, side)  # (B, d, h, w)
        t = self.act(self.bn1(self.conv1(t)))  # (B, e*d, h, w)
        t = self.drop(self.act(self.bn2(self.pointwise(self.conv2(t)))))
        t = self.out_act(self.bn3(self.conv3(t)))  # (B, d, h, w)
        return torch.cat([cls, t.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + N, d)


class LCA(nn.Module):
    """Layer-wise class-token attention: one transformer block whose only query is the last token.

    ``tokens`` are the per-block class tokens ``(B, L, d)``; the query is ``c_L``; keys/values are
    ``c_1..c_{L-1}`` (cv) or ``c_1..c_L`` (``include_last``, official). ``'post'``:
    ``y = LN1(c_L + A(c_L; kv))``, ``out = LN2(y + F(y))``. ``'pre'``: ``y = c_L + A(LN1(c_L); LN1(kv))``,
    ``out = y + F(LN2(y))`` -- the residual comes from the raw query token, as in the official code (the
    cv 'pre' variant added it to the normalised query; that quirk is not reproduced).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
        mlp_drop: float,
        ln_order: str,
        drop_path: float,
        layer_scale: float | None,
        include_last: bool,
        norm_eps: float,
    ) -> None:
        super().__init__()
        self.ln_order = choice("lca_encoder_ln_order", ln_order, LCA_LN_ORDERS)
        self.include_last = include_last
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            heads_name="lca_encoder_num_heads",
        )
        self.ls1 = make_layer_scale(dim, layer_scale)
        # a fixed rate, outside the encoder's schedule (block_index=None)
        self.drop_path1 = DropPath(drop_path, block_index=None) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.feedforward = Mlp(dim, mlp_ratio * dim, drop=mlp_drop)
        self.ls2 = make_layer_scale(dim, layer_scale)
        self.drop_path2 = DropPath(drop_path, block_index=None) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, d)
        q = tokens[:, -1:]  # (B, 1, d)
        kv = tokens if self.include_last else tokens[:, :-1]  # (B, L or L - 1, d)
        if self.ln_order == "post":
            y = self.norm1(q + self.drop_path1(self.ls1(self.attn(q, context=kv))))
            y = self.norm2(y + self.drop_path2(self.ls2(self.feedforward(y))))
        else:
            y = q + self.drop_path1(self.ls1(self.attn(self.norm1(q), context=self.norm1(kv))))
            y = y + self.drop_path2(self.ls2(self.feedforward(self.norm2(y))))
        return y[:, 0]


class CeiT(VisionModel):
    """I2T stem -> patch tokens + class token + absolute positions -> blocks with LeFF -> LCA -> head.

    Positions: a learned absolute embedding ``(1, N + 1, d)`` (the source library's ``(1, 1, d)`` bias
    carried no position), resampled bicubically over the grid (class entry kept) for other input sizes, so
    the model is not pinned to one resolution (square inputs). ``ln_order='residual'`` is supported: the
    class token recorded after block ``i`` is the encoder output had it stopped there,
    ``x_i + LN_final(r_i)`` at the class position (``x_i`` for ``'pre'``/``'post'``).

    Keyword-only extras reproduce the reference checkpoints: ``i2t_conv_padding``, ``i2t_conv_bias``,
    ``i2t_max_pool_padding`` (stem geometry), ``embed_norm`` (LayerNorm after the patch projection, cv
    layout), ``qkv_bias``, ``norm_eps``, ``leff_out_act`` (GELU after LeFF's last BN, cv layout),
    ``lca_layer_embed`` (learned ``pos_layer_embed (1, L, d)`` added to the class tokens),
    ``lca_include_last`` (LCA keys/values include the query token) and ``final_norm`` (LayerNorm before the
    head). ``classifier_mlp_d=None`` gives a single Linear head.
    """

    fixed_resolution = False

    def __init__(
        self,
        image_size: int = 224,
        d_model: int = 768,
        patch_size: int = 4,
        dropout: float = 0.0,
        encoder_num_heads: int = 12,
        num_encoder_blocks: int = 12,
        encoder_dropout: float = 0.0,
        encoder_attention_dropout: float = 0.0,
        encoder_projection_dropout: float = 0.0,
        classifier_mlp_d: int | None = 2048,
        i2t_out_channels: int = 32,
        i2t_conv_kernel_size: int = 7,
        i2t_conv_stride: int = 2,
        i2t_max_pool_kernel_size: int = 3,
        i2t_max_pool_stride: int = 2,
        leff_expand_ratio: int = 4,
        leff_depthwise_kernel: int = 3,
        leff_depthwise_stride: int = 1,
        leff_depthwise_padding: int = 1,
        leff_depthwise_separable: bool = True,
        lca_encoder_expansion_ratio: int = 4,
        lca_encoder_num_heads: int = 12,
        lca_encoder_dropout: float = 0.0,
        lca_encoder_attention_dropout: float = 0.0,
        lca_encoder_projection_dropout: float = 0.0,
        lca_encoder_ln_order: str = "post",
        lca_encoder_stodepth_prob: float = 0.0,
        lca_encoder_layer_scale: float | None = None,
        lca_encoder_qkv_bias: bool = False,
        patchify_technique: str = "linear",
        stochastic_depth: bool = False,
        stochastic_depth_mp: float | None = None,
        layer_scale: float | None = None,
        ln_order: str = "post",
        num_classes: int = 1000,
        in_channels: int = 3,
        *,
        i2t_conv_padding: int = 0,
        i2t_conv_bias: bool = True,
        i2t_max_pool_padding: int = 0,
        embed_norm: bool = True,
        qkv_bias: bool = False,
        norm_eps: float = 1e-5,
        leff_out_act: bool = True,
        lca_layer_embed: bool = False,
        lca_include_last: bool = False,
        final_norm: bool = False,
    ) -> None:
        check_ceit_arguments(
            image_size=image_size,
            d_model=d_model,
            patch_size=patch_size,
            encoder_num_heads=encoder_num_heads,
            num_encoder_blocks=num_encoder_blocks,
            i2t_out_channels=i2t_out_channels,
            i2t_conv_kernel_size=i2t_conv_kernel_size,
            i2t_conv_stride=i2t_conv_stride,
            i2t_max_pool_kernel_size=i2t_max_pool_kernel_size,
            i2t_max_pool_stride=i2t_max_pool_stride,
            leff_expand_ratio=leff_expand_ratio,
            leff_depthwise_kernel=leff_depthwise_kernel,
            leff_depthwise_stride=leff_depthwise_stride,
            lca_encoder_expansion_ratio=lca_encoder_expansion_ratio,
            lca_encoder_num_heads=lca_encoder_num_heads,
            in_channels=in_channels,
            num_classes=num_classes,
            leff_depthwise_padding=leff_depthwise_padding,
            i2t_conv_padding=i2t_conv_padding,
            i2t_max_pool_padding=i2t_max_pool_padding,
            classifier_mlp_d=classifier_mlp_d,
            dropout=dropout,
            encoder_dropout=encoder_dropout,
            encoder_attention_dropout=encoder_attention_dropout,
            encoder_projection_dropout=encoder_projection_dropout,
            lca_encoder_dropout=lca_encoder_dropout,
            lca_encoder_attention_dropout=lca_encoder_attention_dropout,
            lca_encoder_projection_dropout=lca_encoder_projection_dropout,
            lca_encoder_stodepth_prob=lca_encoder_stodepth_prob,
            layer_scale=layer_scale,
            lca_encoder_layer_scale=lca_encoder_layer_scale,
            norm_eps=norm_eps,
            lca_encoder_ln_order=lca_encoder_ln_order,
            lca_include_last=lca_include_last,
        )
        super().__init__(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        self.num_features = d_model
        self.patch_size = patch_size
        self.i2t = Image2Tokens(
            in_channels=in_channels,
            out_channels=i2t_out_channels,
            kernel_size=i2t_conv_kernel_size,
            stride=i2t_conv_stride,
            padding=i2t_conv_padding,
            bias=i2t_conv_bias,
            pool_kernel_size=i2t_max_pool_kernel_size,
            pool_stride=i2t_max_pool_stride,
            pool_padding=i2t_max_pool_padding,
        )
        #: token-grid side for the nominal input: stem conv, max-pool, then floor division by the patch
        self.grid_size = self.i2t.output_side(image_size) // patch_size
        if self.grid_size < 1:
            raise ConfigError(
                f"image_size={image_size} is too small: the I2T stem and patch_size={patch_size} leave no token"
            )
        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_channels=i2t_out_channels,
            dim=d_model,
            technique=patchify_technique,
            norm=embed_norm,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, d_model))
        self.pos_drop = nn.Dropout(dropout)

        self.encoder = Encoder.build(
            dim=d_model,
            depth=num_encoder_blocks,
            attn=lambda i: Attention(
                d_model,
                encoder_num_heads,
                qkv_bias=qkv_bias,
                attn_drop=encoder_attention_dropout,
                proj_drop=encoder_projection_dropout,
            ),
            mlp=lambda i: LeFF(
                d_model,
                expand_ratio=leff_expand_ratio,
                kernel_size=leff_depthwise_kernel,
                padding=leff_depthwise_padding,
                separable=leff_depthwise_separable,
                out_act=leff_out_act,
                drop=encoder_dropout,
            ),
            ln_order=ln_order,
            layer_scale=layer_scale,
            stochastic_depth=stochastic_depth,
            stochastic_depth_mp=stochastic_depth_mp,
            norm_eps=norm_eps,
        )
        L = num_encoder_blocks
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, L, d_model)) if lca_layer_embed else None
        self.lca = LCA(
            d_model,
            num_heads=lca_encoder_num_heads,
            mlp_ratio=lca_encoder_expansion_ratio,
            qkv_bias=lca_encoder_qkv_bias,
            attn_drop=lca_encoder_attention_dropout,
            proj_drop=lca_encoder_projection_dropout,
            mlp_drop=lca_encoder_dropout,
            ln_order=lca_encoder_ln_order,
            drop_path=lca_encoder_stodepth_prob,
            layer_scale=lca_encoder_layer_scale,
            include_last=lca_include_last,
            norm_eps=norm_eps,
        )
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if final_norm else nn.Identity()
        self.head = ClassifierHead(d_model, num_classes, hidden_dim=classifier_mlp_d, dropout=dropout)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if x.shape[-2] != x.shape[-1]:
            raise InputShapeError(
                f"CeiT expects square inputs (a square LeFF token grid), got {tuple(x.shape[-2:])}"
            )

    def position_embedding(self, side: int) -> torch.Tensor:
        """``pos_embed`` for a ``side x side`` token grid: as built, or resampled bicubically (class entry kept)."""
        if side == self.grid_size:
            return self.pos_embed
        g, d = self.grid_size, self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)  # (1, d, g, g)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        patches = grid.flatten(2).transpose(1, 2)  # (1, side^2, d)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.i2t(x)  # (B, C', S, S)
        side = x.shape[-1] // self.patch_size
        x = self.patch_embed(x)  # (B, N, d), N = side^2
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.position_embedding(side))  # (B, N + 1, d)

        streams = self.encoder.start(x)
        cls_tokens = []
        for blk in self.encoder.blocks:
            streams = blk.step(streams)
            cls_tokens.append(self.encoder.finish(tuple(s[:, :1] for s in streams)))  # (B, 1, d)
        tokens = torch.cat(cls_tokens, dim=1)  # (B, L, d)
        if self.pos_layer_embed is not None:
            tokens = tokens + self.pos_layer_embed
        return self.norm(self.lca(tokens))  # (B, d)


# -------------------------------------------------------------------------------- checkpoint conversion
#: coeusguo/ceit key -> ours (docs/models.md#pretrained-weights). ``cls_token``, ``pos_embed``, ``pos_layer_embed``, ``lca.*`` and
#: ``norm.*`` keep their names; the I2T stem loses its ``backbone`` level, LeFF becomes the block's ``mlp``
_FROM_OFFICIAL = (
    (r"^i2t\.backbone\.", "i2t."),
    (r"^i2t\.proj\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.leff\.", r"encoder.blocks.\1.mlp."),
    (r"^blocks\.", "encoder.blocks."),
    (r"^head\.", "head.fc."),
)
_TO_OFFICIAL = (
    (r"^i2t\.(conv|bn)\.", r"i2t.backbone.\1."),
    (r"^patch_embed\.proj\.", "i2t.proj."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.", r"blocks.\1.leff."),
    (r"^encoder\.blocks\.", "blocks."),
    (r"^head\.fc\.", "head."),
)


def convert_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """coeusguo/ceit ``ceit_*_patch16_224`` state_dict -> this module's names (``ceit_*`` presets)."""
    return rename_keys(state, _FROM_OFFICIAL)


def to_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_official_checkpoint`."""
    return rename_keys(state, _TO_OFFICIAL)


# ----------------------------------------------------------------------------------------- presets
def _official(dim: int, heads: int) -> dict:
    """coeusguo/ceit layout: padded 64-channel stem, conv4 projection, pre-LN eps 1e-6, LeFF without a last
    GELU, ``pos_layer_embed``, LCA over all L class tokens, final norm, Linear head."""
    return dict(
        image_size=224,
        d_model=dim,
        patch_size=4,
        encoder_num_heads=heads,
        num_encoder_blocks=12,
        classifier_mlp_d=None,
        i2t_out_channels=64,
        i2t_conv_kernel_size=7,
        i2t_conv_stride=2,
        i2t_max_pool_kernel_size=3,
        i2t_max_pool_stride=2,
        leff_expand_ratio=4,
        leff_depthwise_kernel=3,
        leff_depthwise_stride=1,
        leff_depthwise_padding=1,
        leff_depthwise_separable=False,
        lca_encoder_expansion_ratio=4,
        lca_encoder_num_heads=heads,
        lca_encoder_ln_order="pre",
        lca_encoder_qkv_bias=True,
        patchify_technique="convolutional",
        ln_order="pre",
        num_classes=1000,
        i2t_conv_padding=3,
        i2t_conv_bias=False,
        i2t_max_pool_padding=1,
        embed_norm=False,
        qkv_bias=True,
        norm_eps=1e-6,
        leff_out_act=False,
        lca_layer_embed=True,
        lca_include_last=True,
        final_norm=True,
    )


# default_cfg of the official models: timm 0.3.2 ``vision_transformer._cfg()`` (ImageNet mean/std,
# bicubic, crop 0.9); the repo's own eval transform (datasets.py) resizes to 256 and crops 224 (0.875)
_CEIT = dict(family="ceit", builder=CeiT, crop_pct=0.9, reference_params_decimals=2)
for _name, _dim, _heads, _params_m in (
    ("ceit_tiny", 192, 3, 6.36),
    ("ceit_small", 384, 6, 24.20),
    ("ceit_base", 768, 12, 94.41),
):
    register_preset(
        Preset(
            name=_name,
            kwargs=_official(_dim, _heads),
            reference=f"coeusguo/ceit {_name}_patch16_224",
            reference_params_m=_params_m,
            **_CEIT,
        )
    )
register_alias("ceit", "ceit_tiny")
