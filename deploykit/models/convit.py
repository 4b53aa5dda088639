"""ConViT: gated positional self-attention (GPSA) with a soft convolutional inductive bias.

Paper: d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
ICML 2021, arXiv 2103.10697. Reference implementations: facebookresearch/convit and timm
``timm/models/convit.py`` (the presets below reproduce timm's layout). Documented API:
``cv.backbones.ConViT.model.ConViT`` (shivam7569/cv), without that library's defects (docs/models.md, "Where deploykit deliberately differs"):
the relative-position table is built at construction (any batch size, stable state_dict), the head check
uses ``%``, ``ln_order='residual'`` works, and ``updateStochasticDepthRate`` works.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models.base import VisionModel
from deploykit.models.layers import (
    Attention,
    ClassifierHead,
    Encoder,
    Mlp,
    PatchEmbed,
)
from deploykit.models.layers.checks import (
    choice,
    divisible,
    non_negative_int,
    optional_positive_float,
    vit_arguments,
)
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys

LOCALITY_DISTANCE_METHODS = ("constant", "adaptive")


def relative_position_table(grid: int, d_pos: int) -> torch.Tensor:
    """``(1, N, N, d_pos)`` with channels ``[dx, dy, dx^2 + dy^2, 0, ...]`` for tokens in raster order.

    ``dx = col_key - col_query`` and ``dy = row_key - row_query``; channels beyond 3 stay zero.
    """
    idx = torch.arange(grid)
    rows, cols = idx.repeat_interleave(grid), idx.repeat(grid)  # (N,) each
    dx = (cols[None, :] - cols[:, None]).float()  # (N, N)
    dy = (rows[None, :] - rows[:, None]).float()
    table = torch.zeros(1, grid * grid, grid * grid, d_pos)
    table[0, :, :, 0], table[0, :, :, 1], table[0, :, :, 2] = dx, dy, dx**2 + dy**2
    return table


class GPSA(nn.Module):
    """Gated positional self-attention.

    ``A_h = (1 - g_h) softmax(q k^T / sqrt(d_h)) + g_h softmax(pos_proj(R))``, ``g_h = sigmoid(gating_param_h)``,
    each row renormalised (a no-op up to rounding, kept for bit-parity with the references), then ``A V``.
    The positional term ``softmax(pos_proj(R))`` does not depend on the input (see
    :meth:`positional_attention`); ``R`` is a non-persistent buffer built at construction.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        grid_size: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        locality_strength: float = 1.0,
        use_conv_init: bool = True,
        locality_distance_method: str = "constant",
        d_pos: int = 3,
    ) -> None:
        super().__init__()
        divisible("d_model", dim, "encoder_num_heads", num_heads)
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pos_proj = nn.Linear(d_pos, num_heads)
        self.gating_param = nn.Parameter(torch.ones(num_heads))
        self.register_buffer("rel_indices", relative_position_table(grid_size, d_pos), persistent=False)
        for lin in (self.qk, self.v, self.proj, self.pos_proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        if use_conv_init:
            self.local_init(locality_strength, locality_distance_method)

    @torch.no_grad()
    def local_init(self, locality_strength: float, locality_distance_method: str) -> None:
        """Convolutional init: ``v = I`` and head ``h1 + k*h2`` attends around offset ``(h2 - c, h1 - c)``."""
        self.v.weight.copy_(torch.eye(self.dim))
        distance = (
            1.0 if locality_distance_method == "constant" else max(1.0, 1.0 / math.sqrt(locality_strength))
        )
        k = int(math.isqrt(self.num_heads))
        center = (k - 1) / 2 if k % 2 == 0 else k // 2
        for h1 in range(k):
            for h2 in range(k):
                pos = h1 + k * h2
                self.pos_proj.weight[pos, 2] = -1
                self.pos_proj.weight[pos, 1] = 2 * (h1 - center) * distance
                self.pos_proj.weight[pos, 0] = 2 * (h2 - center) * distance
        self.pos_proj.weight.mul_(locality_strength)

    def positional_attention(self) -> torch.Tensor:
        """``softmax_j(pos_proj(r_ij))``, shape ``(1, H, N, N)``: input-independent."""
        return self.pos_proj(self.rel_indices).permute(0, 3, 1, 2).softmax(dim=-1)

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.gating_param).view(1, -1, 1, 1)  # (1, H, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qk.unbind(0)  # (B, H, N, hd)
        patch_score = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        g = self.gates()
        attn = (1.0 - g) * patch_score + g * self.positional_attention()
        attn = self.attn_drop(attn / attn.sum(dim=-1, keepdim=True))
        v = self.v(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def _check_gpsa_arguments(
    *,
    num_gated_blocks: object,
    num_encoder_blocks: int,
    locality_strength: object,
    locality_distance_method: object,
    d_pos: object,
) -> None:
    """ConViT's own arguments (the shared ViT ones are checked by ``vit_arguments``)."""
    non_negative_int("num_gated_blocks", num_gated_blocks)
    if num_gated_blocks > num_encoder_blocks:
        raise ConfigError(
            f"num_gated_blocks={num_gated_blocks} exceeds num_encoder_blocks={num_encoder_blocks}"
        )
    optional_positive_float("locality_strength", locality_strength)
    choice("locality_distance_method", locality_distance_method, LOCALITY_DISTANCE_METHODS)
    if isinstance(d_pos, bool) or not isinstance(d_pos, int) or d_pos < 3:
        raise ConfigError(f"d_pos must be an integer >= 3 (channels dx, dy, dx^2+dy^2), got {d_pos!r}")


class ConViT(VisionModel):
    """ViT whose first ``num_gated_blocks`` blocks use GPSA; the class token joins before the first
    plain-attention block. With ``num_gated_blocks == num_encoder_blocks`` no block would ever read a class
    token, so the head averages the patch tokens instead.

    ``locality_distance_method``: ``'constant'`` (head-centre spacing 1) or ``'adaptive'``
    (spacing ``max(1, 1/sqrt(locality_strength))``). Keyword-only extras reproduce timm's layout:
    ``embed_norm`` (LayerNorm after the patch projection, cv layout), ``abs_pos_embed`` (learned
    ``(1, N, d)`` position embedding), ``qkv_bias``, ``norm_eps``, ``final_norm``;
    ``classifier_mlp_d=None`` gives a single Linear head.
    """

    def __init__(
        self,
        d_model: int,
        image_size: int,
        patch_size: int,
        classifier_mlp_d: int | None,
        encoder_mlp_d: int,
        encoder_num_heads: int,
        num_encoder_blocks: int,
        num_gated_blocks: int = 10,
        locality_strength: float = 1.0,
        locality_distance_method: str = "constant",
        use_conv_init: bool = True,
        d_pos: int = 3,
        dropout: float = 0.0,
        encoder_dropout: float = 0.0,
        encoder_attention_dropout: float = 0.0,
        encoder_projection_dropout: float = 0.0,
        patchify_technique: str = "linear",
        stochastic_depth: bool = False,
        stochastic_depth_mp: float | None = None,
        layer_scale: float | None = None,
        ln_order: str = "residual",
        in_channels: int = 3,
        num_classes: int = 1000,
        *,
        embed_norm: bool = True,
        abs_pos_embed: bool = False,
        qkv_bias: bool = False,
        norm_eps: float = 1e-5,
        final_norm: bool = False,
    ) -> None:
        vit_arguments(
            d_model=d_model,
            image_size=image_size,
            patch_size=patch_size,
            encoder_mlp_d=encoder_mlp_d,
            encoder_num_heads=encoder_num_heads,
            num_encoder_blocks=num_encoder_blocks,
            in_channels=in_channels,
            num_classes=num_classes,
            classifier_mlp_d=classifier_mlp_d,
            dropout=dropout,
            encoder_dropout=encoder_dropout,
            encoder_attention_dropout=encoder_attention_dropout,
            encoder_projection_dropout=encoder_projection_dropout,
            layer_scale=layer_scale,
        )
        _check_gpsa_arguments(
            num_gated_blocks=num_gated_blocks,
            num_encoder_blocks=num_encoder_blocks,
            locality_strength=locality_strength,
            locality_distance_method=locality_distance_method,
            d_pos=d_pos,
        )
        super().__init__(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        self.num_features = d_model
        grid = image_size // patch_size
        self.num_gated_blocks = num_gated_blocks
        self.use_cls_token = num_gated_blocks < num_encoder_blocks

        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_channels=in_channels,
            dim=d_model,
            technique=patchify_technique,
            norm=embed_norm,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, d_model)) if abs_pos_embed else None
        self.pos_drop = nn.Dropout(dropout)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if self.use_cls_token else None

        gpsa = partial(
            GPSA,
            d_model,
            encoder_num_heads,
            grid_size=grid,
            qkv_bias=qkv_bias,
            attn_drop=encoder_attention_dropout,
            proj_drop=encoder_projection_dropout,
            locality_strength=locality_strength,
            use_conv_init=use_conv_init,
            locality_distance_method=locality_distance_method,
            d_pos=d_pos,
        )
        mhsa = partial(
            Attention,
            d_model,
            encoder_num_heads,
            qkv_bias=qkv_bias,
            attn_drop=encoder_attention_dropout,
            proj_drop=encoder_projection_dropout,
        )
        self.encoder = Encoder.build(
            dim=d_model,
            depth=num_encoder_blocks,
            attn=lambda i: gpsa() if i < num_gated_blocks else mhsa(),
            mlp=lambda i: Mlp(d_model, encoder_mlp_d, drop=encoder_dropout),
            ln_order=ln_order,
            layer_scale=layer_scale,
            stochastic_depth=stochastic_depth,
            stochastic_depth_mp=stochastic_depth_mp,
            norm_eps=norm_eps,
        )
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if final_norm else nn.Identity()
        self.head = ClassifierHead(d_model, num_classes, hidden_dim=classifier_mlp_d, dropout=dropout)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)  # (B, N, d)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        streams = self.encoder.start(self.pos_drop(x))
        for i, blk in enumerate(self.encoder.blocks):
            if i == self.num_gated_blocks:  # static: the class token joins the first plain-attention block
                cls = self.cls_token.expand(x.shape[0], -1, -1)
                streams = tuple(torch.cat([cls, s], dim=1) for s in streams)  # (B, N + 1, d)
            streams = blk.step(streams)
        x = self.norm(self.encoder.finish(streams))
        return x[:, 0] if self.use_cls_token else x.mean(dim=1)


# -------------------------------------------------------------------------------- checkpoint conversion
#: timm ``ConVit`` key -> ours (docs/models.md#pretrained-weights); GPSA (``qk, v, proj, pos_proj, gating_param``) and MHSA (``qkv,
#: proj``) blocks keep their sub-module names, so only the block prefix and the head move
_FROM_TIMM = ((r"^blocks\.", "encoder.blocks."), (r"^head\.", "head.fc."))
_TO_TIMM = ((r"^encoder\.blocks\.", "blocks."), (r"^head\.fc\.", "head."))


def convert_timm_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``convit_*`` state_dict -> this module's names (the ``convit_*`` presets load it strictly)."""
    return rename_keys(state, _FROM_TIMM)


def to_timm_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_timm_checkpoint`: a ``convit_*`` preset's state_dict in timm's names."""
    return rename_keys(state, _TO_TIMM)


# ----------------------------------------------------------------------------------------- presets
def _timm(heads: int, head_dim: int) -> dict:
    """timm ``ConVit`` layout: conv16 patch embed + pos_embed, 10 GPSA + 2 MHSA pre-LN blocks (eps 1e-6),
    no qkv bias, final norm, Linear head, local init with locality strength 1."""
    d = heads * head_dim
    return dict(
        d_model=d,
        image_size=224,
        patch_size=16,
        classifier_mlp_d=None,
        encoder_mlp_d=4 * d,
        encoder_num_heads=heads,
        num_encoder_blocks=12,
        num_gated_blocks=10,
        patchify_technique="convolutional",
        ln_order="pre",
        embed_norm=False,
        abs_pos_embed=True,
        norm_eps=1e-6,
        final_norm=True,
    )


for _name, _heads, _hd, _params in (
    ("convit_tiny", 4, 48, 5.711),
    ("convit_small", 9, 48, 27.777),
    ("convit_base", 16, 48, 86.540),
    ("convit_tiny_plus", 4, 64, 9.973),
    ("convit_small_plus", 9, 64, 48.980),
    ("convit_base_plus", 16, 64, 153.135),
):
    register_preset(
        Preset(
            name=_name,
            family="convit",
            builder=ConViT,
            kwargs=_timm(_heads, _hd),
            reference=f"timm {_name.removesuffix('_plus')}"
            + (" (64 dims/head)" if _name.endswith("plus") else ""),
            reference_params_m=_params,
            reference_params_decimals=3,
        )
    )
register_alias("convit", "convit_tiny")
