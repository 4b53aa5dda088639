"""DeepViT: re-attention for deeper vision transformers.

Paper: Zhou et al., "DeepViT: Towards Deeper Vision Transformer", arXiv 2103.11886.
Reference implementation: zhoudaquan/dvit_repo ``models/deep_vision_transformer.py`` (presets below
reproduce its layout: conv patch embedding, absolute position embedding, pre-LN, final norm, Linear head).
Documented API: ``cv.backbones.DeepViT.model.DeepViT`` (shivam7569/cv), without that library's defects.
"""

from __future__ import annotations

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
from deploykit.models.layers.checks import vit_arguments
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys

PATCH_STEMS = ("none", "cnn")


class ReAttention(nn.Module):
    """Mix the softmaxed attention maps across heads: ``BN(Conv1x1_heads(A)) * scale``.

    Heads are the channels of ``(B, H, N, N)``: a learnable ``H x H`` matrix ``Theta`` (``reatten_matrix``,
    with bias) followed by ``BatchNorm2d(H)`` (``var_norm``). Rows no longer sum to one afterwards.
    """

    def __init__(self, num_heads: int, scale: float = 1.0) -> None:
        super().__init__()
        self.reatten_matrix = nn.Conv2d(num_heads, num_heads, kernel_size=1)
        self.var_norm = nn.BatchNorm2d(num_heads)
        self.scale = scale

    def forward(self, attn: torch.Tensor) -> torch.Tensor:  # (B, H, N, N)
        attn = self.var_norm(self.reatten_matrix(attn))
        return attn * self.scale if self.scale != 1.0 else attn


class CNNStem(nn.Module):
    """DeepViT-S/L patch stem: ``conv7x7/2 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> Conv(p/2, stride p/2)``."""

    def __init__(self, *, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.proj = nn.Conv2d(64, dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


def _check_deepvit_arguments(
    *,
    patch_stem: object,
    patch_size: int,
    re_attention_depth: object,
    num_encoder_blocks: int,
    residual_scale: float,
) -> None:
    """DeepViT's own arguments (the shared ViT ones are checked by ``vit_arguments``)."""
    if patch_stem not in PATCH_STEMS:
        raise ConfigError(f"patch_stem must be one of {PATCH_STEMS}, got {patch_stem!r}")
    if patch_stem == "cnn" and patch_size % 4 != 0:
        raise ConfigError(f"patch_stem='cnn' needs patch_size divisible by 4, got patch_size={patch_size}")
    if re_attention_depth is not None and not 0 <= re_attention_depth <= num_encoder_blocks:
        raise ConfigError(
            f"re_attention_depth must be in [0, num_encoder_blocks={num_encoder_blocks}], got {re_attention_depth}"
        )
    if residual_scale <= 0:
        raise ConfigError(f"residual_scale must be positive, got {residual_scale}")


class DeepViT(VisionModel):
    """ViT with optional re-attention in every block (``re_attention=True``).

    Positions: a learned absolute embedding ``(1, N + 1, d)`` (the source library's ``(1, 1, d)`` bias
    carried no position). Keyword-only extras reproduce the reference checkpoints:
    ``embed_norm`` (LayerNorm after the patch projection, cv layout), ``qkv_bias``, ``norm_eps``,
    ``final_norm`` (LayerNorm before the head), ``re_attention_depth`` (re-attention only in the last N
    blocks), ``re_attention_scale`` (multiply re-attended maps by ``head_dim**-0.5``), ``residual_scale``
    (pre-LN ``x + f(LN(s x)) / s``) and ``patch_stem`` (``'none'`` or the ``'cnn'`` stem of DeepViT-S/L).
    ``classifier_mlp_d=None`` gives a single Linear head.
    """

    def __init__(
        self,
        num_classes: int,
        d_model: int,
        image_size: int,
        patch_size: int,
        classifier_mlp_d: int | None,
        encoder_mlp_d: int,
        encoder_num_heads: int,
        num_encoder_blocks: int,
        dropout: float = 0.0,
        encoder_dropout: float = 0.0,
        encoder_attention_dropout: float = 0.0,
        encoder_projection_dropout: float = 0.0,
        patchify_technique: str = "linear",
        stochastic_depth: bool = False,
        stochastic_depth_mp: float | None = None,
        layer_scale: float | None = None,
        ln_order: str = "residual",
        re_attention: bool = False,
        in_channels: int = 3,
        *,
        embed_norm: bool = True,
        qkv_bias: bool = False,
        norm_eps: float = 1e-5,
        final_norm: bool = False,
        re_attention_depth: int | None = None,
        re_attention_scale: bool = False,
        residual_scale: float = 1.0,
        patch_stem: str = "none",
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
        _check_deepvit_arguments(
            patch_stem=patch_stem,
            patch_size=patch_size,
            re_attention_depth=re_attention_depth,
            num_encoder_blocks=num_encoder_blocks,
            residual_scale=residual_scale,
        )
        super().__init__(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        self.num_features = d_model
        num_patches = (image_size // patch_size) ** 2

        if patch_stem == "cnn":
            self.patch_embed: nn.Module = CNNStem(patch_size=patch_size, in_channels=in_channels, dim=d_model)
        else:
            self.patch_embed = PatchEmbed(
                patch_size=patch_size,
                in_channels=in_channels,
                dim=d_model,
                technique=patchify_technique,
                norm=embed_norm,
            )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, d_model))
        self.pos_drop = nn.Dropout(dropout)

        L = num_encoder_blocks
        # re-attention in the last ``re_attention_depth`` blocks (all of them by default)
        first_re = L - (L if re_attention_depth is None else re_attention_depth)
        head_scale = (d_model // encoder_num_heads) ** -0.5 if re_attention_scale else 1.0

        def attention(i: int) -> Attention:
            return Attention(
                d_model,
                encoder_num_heads,
                qkv_bias=qkv_bias,
                attn_drop=encoder_attention_dropout,
                proj_drop=encoder_projection_dropout,
                attn_transform=ReAttention(encoder_num_heads, head_scale)
                if re_attention and i >= first_re
                else None,
            )

        self.encoder = Encoder.build(
            dim=d_model,
            depth=L,
            attn=attention,
            mlp=lambda i: Mlp(d_model, encoder_mlp_d, drop=encoder_dropout),
            ln_order=ln_order,
            layer_scale=layer_scale,
            stochastic_depth=stochastic_depth,
            stochastic_depth_mp=stochastic_depth_mp,
            norm_eps=norm_eps,
            residual_scale=residual_scale,
        )
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if final_norm else nn.Identity()
        self.head = ClassifierHead(d_model, num_classes, hidden_dim=classifier_mlp_d, dropout=dropout)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.patch_embed(x)  # (B, N, d)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N + 1, d)
        x = self.encoder(x)
        return self.norm(x)[:, 0]


# -------------------------------------------------------------------------------- checkpoint conversion
#: zhoudaquan/dvit_repo key -> ours (docs/models.md#pretrained-weights), for both patch stems (``patch_embed.proj`` or the CNN stem's
#: ``patch_embed.{conv1,bn1,conv2,bn2,proj}``, whose names are kept); re-attention moves under the
#: attention's ``attn_transform``
_FROM_OFFICIAL = (
    (r"^blocks\.(\d+)\.attn\.(reatten_matrix|var_norm)\.", r"encoder.blocks.\1.attn.attn_transform.\2."),
    (r"^blocks\.", "encoder.blocks."),
    (r"^head\.", "head.fc."),
)
_TO_OFFICIAL = (
    (r"^encoder\.blocks\.(\d+)\.attn\.attn_transform\.", r"blocks.\1.attn."),
    (r"^encoder\.blocks\.", "blocks."),
    (r"^head\.fc\.", "head."),
)


def convert_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """dvit_repo ``deepvit_patch16_224_re_attn_*`` / ``deepvit_S`` / ``deepvit_L`` state_dict -> our names."""
    return rename_keys(state, _FROM_OFFICIAL)


def to_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_official_checkpoint`."""
    return rename_keys(state, _TO_OFFICIAL)


# ----------------------------------------------------------------------------------------- presets
def _official(depth: int, *, dim: int = 384, **extra: object) -> dict:
    """zhoudaquan/dvit_repo layout: conv16 patch embed, pos_embed (1,197,d), pre-LN eps 1e-6, final norm."""
    return dict(
        num_classes=1000,
        d_model=dim,
        image_size=224,
        patch_size=16,
        classifier_mlp_d=None,
        encoder_mlp_d=3 * dim,
        encoder_num_heads=12,
        num_encoder_blocks=depth,
        patchify_technique="convolutional",
        ln_order="pre",
        re_attention=True,
        embed_norm=False,
        qkv_bias=True,
        norm_eps=1e-6,
        final_norm=True,
        **extra,
    )


_DVIT = dict(
    family="deepvit",
    builder=DeepViT,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    crop_pct=0.9,
    reference_params_decimals=2,
)
register_preset(
    Preset(
        name="deepvit_16b",
        kwargs=_official(16),
        reference="dvit_repo deepvit_patch16_224_re_attn_16b",
        reference_params_m=24.43,
        **_DVIT,
    )
)
register_preset(
    Preset(
        name="deepvit_24b",
        kwargs=_official(24),
        reference="dvit_repo deepvit_patch16_224_re_attn_24b",
        reference_params_m=36.26,
        **_DVIT,
    )
)
register_preset(
    Preset(
        name="deepvit_32b",
        kwargs=_official(32),
        reference="dvit_repo deepvit_patch16_224_re_attn_32b",
        reference_params_m=48.10,
        **_DVIT,
    )
)
register_preset(
    Preset(
        name="deepvit_s",
        kwargs=_official(
            16, dim=396, re_attention_depth=5, re_attention_scale=True, residual_scale=0.5, patch_stem="cnn"
        ),
        reference="dvit_repo deepvit_S",
        reference_params_m=27.31,
        **_DVIT,
    )
)
register_preset(
    Preset(
        name="deepvit_l",
        kwargs=_official(32, dim=420, re_attention_depth=12, residual_scale=0.5, patch_stem="cnn"),
        reference="dvit_repo deepvit_L",
        reference_params_m=58.88,
        **_DVIT,
    )
)
register_alias("deepvit", "deepvit_16b")
