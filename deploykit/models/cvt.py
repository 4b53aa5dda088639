"""CvT: convolutional token embedding and convolutional projections in a three-stage vision transformer.

Paper: Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021, arXiv 2103.15808.
Reference implementation: microsoft/CvT ``lib/models/cls_cvt.py`` (module names and semantics reproduced,
so its state_dict loads without renaming: ``stage{i}.patch_embed.proj``, ``stage{i}.blocks.{j}.attn
.conv_proj_q.conv``, ..., ``norm``, ``head``). Documented API: lucid ``CvT(config: CvTConfig)``, without
that port's defects (``'avg'`` without ``ceil_mode``, the all-``'lin'`` guard).

The configuration (:class:`CvTConfig`) and its checks live in :mod:`deploykit.models.cvt_config`.

Export notes: attention is plain ``matmul`` (no einsum) with the CvT scale ``dim**-0.5`` (full stage width);
token <-> map reshapes use the grid size read from the conv output as Python ints, keep batch as the
only free dimension and the conv path in NCHW. No position embedding, so any input resolution works.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models.base import VisionModel
from deploykit.models.cvt_config import CvTConfig
from deploykit.models.layers import Mlp, QuickGELU, make_drop_path
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys


class ConvEmbed(nn.Module):
    """Overlapping conv token embedding: ``Conv2d(k, s, p)`` then LayerNorm over channels, map in, map out."""

    def __init__(
        self,
        *,
        in_channels: int,
        dim: int,
        kernel: int,
        stride: int,
        padding: int,
        norm_layer: Callable[[int], nn.Module],
    ) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, H, W)
        H, W = (int(s) for s in x.shape[-2:])
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, HW, D)
        return x.transpose(1, 2).reshape(-1, self.dim, H, W)


class ConvProjection(nn.Module):
    """Map ``(B, C, H, W)`` to tokens ``(B, H'W', C)``.

    ``'dw_bn'``: depthwise ``Conv2d(k, stride, padding, bias=False)`` + ``BatchNorm2d`` (official ``conv``/``bn``);
    ``'avg'``: ``AvgPool2d(k, stride, padding, ceil_mode=True)``; ``'linear'``: no spatial op (plain flatten).
    """

    def __init__(self, dim: int, method: str, *, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.method = method
        if method == "dw_bn":
            self.conv: nn.Module = nn.Conv2d(
                dim, dim, kernel, stride=stride, padding=padding, bias=False, groups=dim
            )
            self.bn: nn.Module = nn.BatchNorm2d(dim)
        elif method == "avg":
            self.conv = nn.AvgPool2d(kernel, stride=stride, padding=padding, ceil_mode=True)
            self.bn = nn.Identity()
        else:
            self.conv = nn.Identity()
            self.bn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)  # (B, H'W', C)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


class ConvAttention(nn.Module):
    """Multi-head attention whose q/k/v come from convolutional projections of the token map.

    The class token (when present) bypasses the spatial projection and is re-prepended before the
    ``proj_q/k/v`` Linears. Scores are scaled by ``dim**-0.5`` (the full stage width, as in the official code).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
        method: str,
        kernel: int,
        stride_kv: int,
        stride_q: int,
        padding_kv: int,
        padding_q: int,
        with_cls_token: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = dim**-0.5
        self.with_cls_token = with_cls_token
        # 'avg' pools only keys and values; the queries keep every position
        q_method = "linear" if method == "avg" else method
        self.conv_proj_q = ConvProjection(dim, q_method, kernel=kernel, stride=stride_q, padding=padding_q)
        self.conv_proj_k = ConvProjection(dim, method, kernel=kernel, stride=stride_kv, padding=padding_kv)
        self.conv_proj_v = ConvProjection(dim, method, kernel=kernel, stride=stride_kv, padding=padding_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor, B: int) -> torch.Tensor:
        return t.reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B = x.shape[0]
        if self.with_cls_token:
            cls, x = x[:, :1], x[:, 1:]  # (B, 1, C), (B, HW, C)
        x = x.transpose(1, 2).reshape(B, self.dim, H, W)
        q, k, v = self.conv_proj_q(x), self.conv_proj_k(x), self.conv_proj_v(x)  # (B, Nq, C), (B, Nkv, C) x2
        if self.with_cls_token:
            q, k, v = (torch.cat([cls, t], dim=1) for t in (q, k, v))
        q = self._heads(self.proj_q(q), B)
        k = self._heads(self.proj_k(k), B)
        v = self._heads(self.proj_v(v), B)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, heads, Nq, Nkv)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, -1, self.dim)  # (B, Nq, C)
        return self.proj_drop(self.proj(x))


class ConvTransformerBlock(nn.Module):
    """Pre-LN block: ``x + DP(Attn(LN1(x), H, W))`` then ``x + DP(MLP(LN2(x)))`` (one DropPath, as official)."""

    def __init__(
        self,
        dim: int,
        attn: ConvAttention,
        mlp: Mlp,
        *,
        norm_layer: Callable[[int], nn.Module],
        drop_path: float | None,
        block_index: int,
        num_blocks: int,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = make_drop_path(drop_path, block_index=block_index, num_blocks=num_blocks)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """ConvEmbed -> tokens (+ optional class token) -> dropout -> blocks -> back to a map.

    Returns ``(map (B, D, H, W), cls (B, 1, D) or None)``.
    """

    def __init__(self, cfg: CvTConfig, i: int, *, in_channels: int) -> None:
        super().__init__()
        dim, depth = cfg.dim_embed[i], cfg.depth[i]
        self.dim = dim
        self.patch_embed = ConvEmbed(
            in_channels=in_channels,
            dim=dim,
            kernel=cfg.patch_size[i],
            stride=cfg.patch_stride[i],
            padding=cfg.patch_padding[i],
            norm_layer=cfg.norm_layer,
        )
        self.has_cls_token = cfg.cls_token[i]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.has_cls_token else None
        self.pos_drop = nn.Dropout(cfg.drop_rate[i])
        rates = _stage_drop_path_rates(cfg.drop_path_rate[i], depth)
        self.blocks = nn.ModuleList(_stage_block(cfg, i, j, rates[j]) for j in range(depth))
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.patch_embed(x)  # (B, D, H, W)
        B, D = x.shape[0], self.dim
        H, W = (int(s) for s in x.shape[-2:])  # static grid: only the batch is dynamic
        x = x.flatten(2).transpose(1, 2)  # (B, HW, D)
        cls = None
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + HW, D)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x, H, W)
        if self.cls_token is not None:
            cls, x = x[:, :1], x[:, 1:]
        return x.transpose(1, 2).reshape(B, D, H, W), cls


def _stage_drop_path_rates(rate: float, depth: int) -> list[float | None]:
    """A linear ramp ``rate * j / (depth - 1)`` over the stage's blocks; a stage with rate 0 has no DropPath
    at all (``None``: the schedule update leaves it off, like the cv library)."""
    if rate <= 0:
        return [None] * depth
    return [rate * j / (depth - 1) if depth > 1 else 0.0 for j in range(depth)]


def _stage_block(cfg: CvTConfig, i: int, j: int, drop_path: float | None) -> ConvTransformerBlock:
    """Block ``j`` of stage ``i`` (attention built before the MLP: the order the weights are drawn in)."""
    dim = cfg.dim_embed[i]
    attn = ConvAttention(
        dim,
        num_heads=cfg.num_heads[i],
        qkv_bias=cfg.qkv_bias[i],
        attn_drop=cfg.attn_drop_rate[i],
        proj_drop=cfg.drop_rate[i],
        method=cfg.qkv_proj_method[i],
        kernel=cfg.kernel_qkv[i],
        stride_kv=cfg.stride_kv[i],
        stride_q=cfg.stride_q[i],
        padding_kv=cfg.padding_kv[i],
        padding_q=cfg.padding_q[i],
        with_cls_token=cfg.cls_token[i],
    )
    mlp = Mlp(
        dim,
        int(dim * cfg.mlp_ratio[i]),
        act_layer=cfg.act_layer,
        drop=cfg.drop_rate[i],
        out_drop=cfg.drop_rate[i],
    )
    return ConvTransformerBlock(
        dim,
        attn,
        mlp,
        norm_layer=cfg.norm_layer,
        drop_path=drop_path,
        block_index=j,
        num_blocks=cfg.depth[i],
    )


class CvT(VisionModel):
    """Convolutional vision transformer built from a :class:`CvTConfig` (official ``cls_cvt`` semantics).

    Stages are attributes ``stage0 .. stage{n-1}`` (the official names, so official checkpoints load
    as-is; HF keys map by the renaming below). Head: when the last stage has a class token,
    ``LayerNorm(cls) -> Linear``; otherwise ``LayerNorm`` over the tokens, mean, ``Linear``.
    ``num_classes=0`` leaves the features (``head = Identity``).
    """

    fixed_resolution = False

    def __init__(self, config: CvTConfig) -> None:
        if not isinstance(config, CvTConfig):
            raise ConfigError(f"config must be a CvTConfig, got {type(config).__name__}")
        config.validate()
        super().__init__(
            in_channels=config.in_channels, image_size=config.image_size, num_classes=config.num_classes
        )
        self.config = config
        self.num_stages = config.num_stages
        self.num_features = config.dim_embed[-1]
        self.use_cls_head = config.cls_token[-1]
        in_ch = config.in_channels
        for i in range(config.num_stages):
            setattr(self, f"stage{i}", CvTStage(config, i, in_channels=in_ch))
            in_ch = config.dim_embed[i]
        self.norm = config.norm_layer(self.num_features)
        self.head = (
            nn.Linear(self.num_features, config.num_classes) if config.num_classes > 0 else nn.Identity()
        )
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        cls = None
        for i in range(self.num_stages):
            x, cls = getattr(self, f"stage{i}")(x)
        if self.use_cls_head:
            return self.norm(cls)[:, 0]  # (B, D): index, never squeeze (B may be 1)
        return self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1)  # (B, D)

    def set_mlp_activation(self, act_layer: Callable[[], nn.Module]) -> None:
        """Replace every MLP activation (and ``config.act_layer``): HF checkpoints were trained with exact
        GELU, the official ones with QuickGELU. No parameters change."""
        self.config.act_layer = act_layer
        for module in self.modules():
            if isinstance(module, Mlp):
                module.act = act_layer()


def _init_weights(m: nn.Module) -> None:
    """Official ``init_weights_trunc_normal``: Linear trunc-normal(0.02) with zero bias; norms 1/0."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# -------------------------------------------------------------------------------- checkpoint conversion
# The official microsoft/CvT keys are this module's own names. Hugging Face ``CvtForImageClassification``
# keys map by this renaming, one table read both ways: (HF suffix, our suffix) per block,
# per stage, and at the top (``CvtModel`` saves without the ``cvt.`` prefix; both are read).
_HF_BLOCK = (
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    *(
        (
            f"attention.attention.convolution_projection_{hf}.convolution_projection.{hf_op}.",
            f"attn.conv_proj_{q}.{op}.",
        )
        for hf, q in (("query", "q"), ("key", "k"), ("value", "v"))
        for hf_op, op in (("convolution", "conv"), ("normalization", "bn"))
    ),
    *(
        (f"attention.attention.projection_{hf}.", f"attn.proj_{q}.")
        for hf, q in (("query", "q"), ("key", "k"), ("value", "v"))
    ),
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_HF_STAGE = (
    ("embedding.convolution_embeddings.projection.", "patch_embed.proj."),
    ("embedding.convolution_embeddings.normalization.", "patch_embed.norm."),
    ("cls_token", "cls_token"),
)
_HF_TOP = (("layernorm.", "norm."), ("classifier.", "head."))


def _swap(rest: str, table: tuple[tuple[str, str], ...], to_hf: bool) -> str | None:
    for hf, ours in table:
        src, dst = (ours, hf) if to_hf else (hf, ours)
        if rest.startswith(src):
            return dst + rest[len(src) :]
    return None


def _rename_cvt(state: dict[str, torch.Tensor], to_hf: bool) -> dict[str, torch.Tensor]:
    stage = (
        r"^stage(\d+)\.(?:blocks\.(\d+)\.)?(.*)$"
        if to_hf
        else r"^(?:cvt\.)?encoder\.stages\.(\d+)\.(?:layers\.(\d+)\.)?(.*)$"
    )

    def rename(m: re.Match) -> str:
        i, j, rest = m[1], m[2], m[3]
        new = _swap(rest, _HF_BLOCK if j is not None else _HF_STAGE, to_hf)
        if new is None:
            return m[0]  # unknown: kept, so the strict check names it
        if to_hf:
            return f"cvt.encoder.stages.{i}." + (f"layers.{j}." if j is not None else "") + new
        return f"stage{i}." + (f"blocks.{j}." if j is not None else "") + new

    top = tuple((r"^" + re.escape(ours if to_hf else hf), hf if to_hf else ours) for hf, ours in _HF_TOP)
    return rename_keys(state, ((stage, rename), *top))


def convert_hf_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``CvtForImageClassification`` state_dict -> official / this module's names.

    The weights alone do not reproduce HF's logits with the ``cvt_*`` presets: HF's MLP uses exact GELU
    where the official code (and the presets) use QuickGELU; :func:`deploykit.models.load_pretrained`
    switches the model with :meth:`CvT.set_mlp_activation`.
    """
    return _rename_cvt(state, to_hf=False)


def to_hf_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_hf_checkpoint`."""
    return _rename_cvt(state, to_hf=True)


# ----------------------------------------------------------------------------------------- presets
def _build(**fields: object) -> CvT:
    """Registry builder: config fields as keywords, so ``create_model('cvt_13', num_classes=10)`` works."""
    return CvT(CvTConfig(**fields))


def _official(
    *, dims: tuple[int, int, int], heads: tuple[int, int, int], depth: tuple[int, int, int], **extra: object
) -> dict:
    """microsoft/CvT ``get_cls_model`` layout: QuickGELU, LayerNorm eps 1e-5, conv embed 7/4/2 then 3/2/1."""
    return dict(
        num_stages=3,
        patch_size=(7, 3, 3),
        patch_stride=(4, 2, 2),
        patch_padding=(2, 1, 1),
        dim_embed=dims,
        num_heads=heads,
        depth=depth,
        act_layer=QuickGELU,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        **extra,
    )


_CVT = dict(family="cvt", builder=_build, reference_params_decimals=2)
register_preset(
    Preset(
        name="cvt_13",
        kwargs=_official(dims=(64, 192, 384), heads=(1, 3, 6), depth=(1, 2, 10)),
        reference="microsoft/CvT CvT-13 (HF microsoft/cvt-13)",
        reference_params_m=20.00,
        **_CVT,
    )
)
register_preset(
    Preset(
        name="cvt_21",
        kwargs=_official(dims=(64, 192, 384), heads=(1, 3, 6), depth=(1, 4, 16)),
        reference="microsoft/CvT CvT-21 (HF microsoft/cvt-21)",
        reference_params_m=31.62,
        **_CVT,
    )
)
register_preset(
    Preset(
        name="cvt_w24",
        kwargs=_official(
            dims=(192, 768, 1024),
            heads=(3, 12, 16),
            depth=(2, 2, 20),
            drop_path_rate=(0.0, 0.0, 0.3),
            image_size=384,
        ),
        reference="microsoft/CvT CvT-W24-384-22k (HF microsoft/cvt-w24-384-22k)",
        reference_params_m=277.20,
        **_CVT,
    )
)
register_alias("cvt", "cvt_13")
