"""HPool-ViT / HVT: vision transformer with hierarchical token pooling.

Paper: Pan et al., "Scalable Vision Transformers with Hierarchical Pooling", ICCV 2021, arXiv 2103.10619.
Reference implementation: zhuang-group/HVT ``models.py`` (presets below reproduce its layout: conv16 patch
embedding, absolute position embedding, pre-LN, one position embedding per pooling stage, final norm,
mean over tokens, Linear head).
Documented API: ``cv.backbones.HPool_ViT.model.HPool_ViT`` (shivam7569/cv), without that library's defects.

Checkpoint layout (official key -> ours): ``pos_embed`` -> ``pos_embed``; ``patch_embed.proj.*`` ->
``patch_embed.proj.*``; ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`` ->
``encoder.blocks.i.*``; ``blocks.i.pos_embed`` -> ``pools.{i+1}.pos_embed`` (official block ``i`` pools
*after* its MLP, which is *before* block ``i + 1`` here); ``norm.*`` -> ``norm.*``; ``head.*`` -> ``head.fc.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from deploykit.models.layers.checks import positive_int, vit_arguments
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys

POOL_KERNEL = 3
POOL_STRIDE = 2


class TokenPool(nn.Module):
    """Max-pool over the token axis: ``(B, N, d) -> (B, floor((N - k) / s) + 1, d)``, no padding.

    Kept as its own module so that an export rewrite can swap it for the equivalent 2-D pool
    (``MaxPool2d((k, 1), (s, 1))`` on ``(B, 1, N, d)``) that TensorRT accepts.
    """

    def __init__(self, kernel_size: int = POOL_KERNEL, stride: int = POOL_STRIDE) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.pool = nn.MaxPool1d(kernel_size, stride)

    def output_length(self, num_tokens: int) -> int:
        return (num_tokens - self.kernel_size) // self.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.transpose(1, 2)).transpose(1, 2)  # (B, N, d) -> (B, d, N) -> pool -> (B, N', d)


class PoolStage(nn.Module):
    """Token pooling followed by this stage's learned position embedding ``(1, N', d)`` (official
    ``blocks.i.pos_embed``; the source library added one shared ``(1, 1, d)`` vector with no position)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pool = TokenPool()
        self.num_tokens = self.pool.output_length(num_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) + self.pos_embed  # (B, N', d)


def _check_hvt_pool(hvt_pool: object, num_blocks: int) -> tuple[int, ...]:
    """``None`` or distinct block indices in ``[0, num_blocks)``; returned sorted."""
    if hvt_pool is None:
        return ()
    if isinstance(hvt_pool, str | bytes) or not isinstance(hvt_pool, Sequence):
        raise ConfigError(f"hvt_pool must be None or a sequence of block indices, got {hvt_pool!r}")
    for i in hvt_pool:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_blocks:
            raise ConfigError(
                f"hvt_pool entries must be block indices in [0, num_encoder_blocks={num_blocks}), got {hvt_pool!r}"
            )
    if len(set(hvt_pool)) != len(hvt_pool):
        raise ConfigError(f"hvt_pool must not repeat a block index, got {hvt_pool!r}")
    return tuple(sorted(hvt_pool))


def _tokens_per_block(num_patches: int, hvt_pool: Sequence[int] | None, num_blocks: int) -> tuple[int, ...]:
    """The static token count entering each block, pooling before the blocks in ``hvt_pool`` (checked)."""
    tokens, counts = num_patches, []
    for i in range(num_blocks):
        if hvt_pool is not None and i in hvt_pool:
            if tokens < POOL_KERNEL:
                raise ConfigError(
                    f"hvt_pool={list(hvt_pool)} pools {tokens} token(s) before block {i}; "
                    f"pooling needs at least {POOL_KERNEL}"
                )
            tokens = (tokens - POOL_KERNEL) // POOL_STRIDE + 1
        counts.append(tokens)
    return tuple(counts)


def hvt_pool_from_block_width(pool_block_width: int, depth: int = 12) -> list[int]:
    """Official ``pool_block_width`` -> ``hvt_pool``: official block ``i`` pools after its MLP when
    ``i % pool_block_width == 0``, i.e. before block ``i + 1`` (``4 -> [1, 5, 9]``)."""
    positive_int("pool_block_width", pool_block_width)
    after = [i for i in range(depth) if i % pool_block_width == 0]
    if after and after[-1] == depth - 1:
        raise ConfigError(
            f"pool_block_width={pool_block_width} pools after the last block (depth={depth}), "
            "which hvt_pool cannot express"
        )
    return [i + 1 for i in after]


class HPool_ViT(VisionModel):  # noqa: N801 - documented name
    """ViT without class token whose token sequence is max-pooled (kernel 3, stride 2) before the blocks
    listed in ``hvt_pool``; features are the mean over the remaining tokens.

    Positions: a learned absolute embedding ``(1, N, d)`` after the patch embedding, and one more of the
    pooled length after every pooling stage. In ``ln_order='residual'`` both streams are pooled and both
    get the stage embedding; the encoder returns ``x + LN_final(r)`` (the source library dropped ``r``).
    With ``hvt_pool=None`` all tokens are mean-pooled (the source library read the first patch token).
    Keyword-only extras reproduce the reference checkpoints: ``embed_norm`` (LayerNorm after the patch
    projection, cv layout), ``qkv_bias``, ``norm_eps``, ``final_norm`` (LayerNorm before the mean).
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
        hvt_pool: Sequence[int] | None = [1, 5, 9],  # noqa: B006 - documented default, never mutated
        in_channels: int = 3,
        *,
        embed_norm: bool = True,
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
        pool_at = _check_hvt_pool(hvt_pool, num_encoder_blocks)
        num_patches = (image_size // patch_size) ** 2
        counts = _tokens_per_block(num_patches, hvt_pool, num_encoder_blocks)
        super().__init__(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
        self.num_features = d_model
        self.hvt_pool = pool_at
        self.num_tokens_per_block = counts

        self.patch_embed = PatchEmbed(
            patch_size=patch_size,
            in_channels=in_channels,
            dim=d_model,
            technique=patchify_technique,
            norm=embed_norm,
            norm_eps=norm_eps,
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, d_model))
        self.pos_drop = nn.Dropout(dropout)

        L = num_encoder_blocks
        # pools[i] runs before block i (Identity where no pooling happens)
        self.pools = nn.ModuleList(
            PoolStage(counts[i - 1] if i > 0 else num_patches, d_model) if i in pool_at else nn.Identity()
            for i in range(L)
        )
        self.encoder = Encoder.build(
            dim=d_model,
            depth=L,
            attn=lambda i: Attention(
                d_model,
                encoder_num_heads,
                qkv_bias=qkv_bias,
                attn_drop=encoder_attention_dropout,
                proj_drop=encoder_projection_dropout,
            ),
            mlp=lambda i: Mlp(d_model, encoder_mlp_d, drop=encoder_dropout),
            ln_order=ln_order,
            layer_scale=layer_scale,
            stochastic_depth=stochastic_depth,
            stochastic_depth_mp=stochastic_depth_mp,
            norm_eps=norm_eps,
        )
        self.norm = nn.LayerNorm(d_model, eps=norm_eps) if final_norm else nn.Identity()
        self.head = ClassifierHead(d_model, num_classes, hidden_dim=classifier_mlp_d, dropout=dropout)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.pos_drop(self.patch_embed(x) + self.pos_embed)  # (B, N, d)
        streams = self.encoder.start(x)
        for pool, blk in zip(self.pools, self.encoder.blocks):
            streams = tuple(pool(s) for s in streams)  # (B, N_i, d) per stream
            streams = blk.step(streams)
        x = self.norm(self.encoder.finish(streams))  # (B, N_last, d)
        return x.mean(dim=1)  # (B, d)


hpool_vit = HPool_ViT


# -------------------------------------------------------------------------------- checkpoint conversion
#: zhuang-group/HVT key -> ours (the mapping in the module docstring). Official block ``i`` pools after its
#: MLP and owns that stage's ``pos_embed``; here the pooling stage before block ``i + 1`` owns it.
_FROM_OFFICIAL = (
    (r"^blocks\.(\d+)\.pos_embed$", lambda m: f"pools.{int(m.group(1)) + 1}.pos_embed"),
    (r"^blocks\.", "encoder.blocks."),
    (r"^head\.", "head.fc."),
)
_TO_OFFICIAL = (
    (r"^pools\.(\d+)\.pos_embed$", lambda m: f"blocks.{int(m.group(1)) - 1}.pos_embed"),
    (r"^encoder\.blocks\.", "blocks."),
    (r"^head\.fc\.", "head."),
)


def convert_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """zhuang-group/HVT state_dict -> this module's names (``hvt_*`` presets)."""
    return rename_keys(state, _FROM_OFFICIAL)


def to_official_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_official_checkpoint`."""
    return rename_keys(state, _TO_OFFICIAL)


# ----------------------------------------------------------------------------------------- presets
def _official(heads: int, pool_block_width: int | None) -> dict:
    """zhuang-group/HVT layout: conv16 patch embed, pos_embed (1,196,d), pre-LN eps 1e-6, qkv bias,
    MLP x4, per-stage pos embeds, final norm, mean over tokens, Linear head; head dim 64."""
    dim = 64 * heads
    return dict(
        num_classes=1000,
        d_model=dim,
        image_size=224,
        patch_size=16,
        classifier_mlp_d=None,
        encoder_mlp_d=4 * dim,
        encoder_num_heads=heads,
        num_encoder_blocks=12,
        patchify_technique="convolutional",
        ln_order="pre",
        hvt_pool=None if pool_block_width is None else hvt_pool_from_block_width(pool_block_width, 12),
        embed_norm=False,
        qkv_bias=True,
        norm_eps=1e-6,
        final_norm=True,
    )


# name, heads, official pool_block_width (None: no pooling), reference params (M, zhuang-group/HVT README)
_VARIANTS = (
    ("hvt_ti_1", 3, 12, 5.74),
    ("hvt_s_0", 6, None, 22.05),
    ("hvt_s_1", 6, 12, 22.09),
    ("hvt_s_2", 6, 6, 22.11),
    ("hvt_s_3", 6, 4, 22.11),
    ("hvt_s_4", 6, 3, 22.12),
)
for _name, _heads, _width, _params in _VARIANTS:
    register_preset(
        Preset(
            name=_name,
            family="hvt",
            builder=HPool_ViT,
            kwargs=_official(_heads, _width),
            reference=f"zhuang-group/HVT {_name.replace('_', '-')} (pool_block_width={_width})",
            reference_params_m=_params,
            reference_params_decimals=2,
        )
    )
register_alias("hvt", "hvt_ti_1")
