"""CvT: convolutional token embedding and convolutional projections in a three-stage vision transformer.

Paper: Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021, arXiv 2103.15808.
Reference implementation: microsoft/CvT ``lib/models/cls_cvt.py`` (module names and semantics reproduced,
so its state_dict loads without renaming: ``stage{i}.patch_embed.proj``, ``stage{i}.blocks.{j}.attn
.conv_proj_q.conv``, ..., ``norm``, ``head``). Documented API: lucid ``CvT(config: CvTConfig)``, without
that port's defects (``'avg'`` without ``ceil_mode``, the all-``'lin'`` guard).

Export notes: attention is plain ``matmul`` (no einsum) with the CvT scale ``dim**-0.5`` (full stage width);
token <-> map reshapes use the grid size read from the conv output as Python ints, keep batch as the
only free dimension and the conv path in NCHW. No position embedding, so any input resolution works.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models.base import VisionModel
from deploykit.models.layers import Mlp, QuickGELU, make_drop_path
from deploykit.models.layers.checks import choice, divisible, non_negative_int, positive_int, probability
from deploykit.models.registry import Preset, register_alias, register_preset
from deploykit.models.weights import rename_keys

QKV_PROJ_METHODS = ("dw_bn", "avg", "linear")
_METHOD_ALIASES = {"lin": "linear"}  # lucid's spelling

#: per-stage fields of CvTConfig and the check applied to each stage's value
_POSITIVE_INT = (
    "patch_size",
    "patch_stride",
    "dim_embed",
    "num_heads",
    "depth",
    "kernel_qkv",
    "stride_q",
    "stride_kv",
)
_NON_NEGATIVE_INT = ("patch_padding", "padding_q", "padding_kv")
_RATES = ("attn_drop_rate", "drop_rate", "drop_path_rate")
_FLAGS = ("qkv_bias", "cls_token", "pos_embed")
PER_STAGE_FIELDS = (
    *_POSITIVE_INT[:5],
    "patch_padding",
    "mlp_ratio",
    *_RATES,
    *_FLAGS,
    "qkv_proj_method",
    "kernel_qkv",
    "padding_q",
    "stride_q",
    "padding_kv",
    "stride_kv",
)


@dataclass
class CvTConfig:
    """Stage layout of a CvT (lucid field names, order and defaults).

    Every per-stage field (:data:`PER_STAGE_FIELDS`) is a sequence of length ``num_stages``; a single
    scalar (number, bool or string) is broadcast to every stage. Sequences are stored as tuples and
    ``'lin'`` is normalised to ``'linear'``. ``pos_embed`` is accepted and unused, as in the official code
    (CvT has no position embedding). ``image_size`` (extra) is the nominal input size recorded in the
    model's data config; the network itself takes any resolution.
    Invalid values raise :class:`~deploykit.core.errors.ConfigError` naming the field.
    """

    num_stages: int
    patch_size: tuple[int, ...]
    patch_stride: tuple[int, ...]
    patch_padding: tuple[int, ...]
    dim_embed: tuple[int, ...]
    num_heads: tuple[int, ...]
    depth: tuple[int, ...]
    in_channels: int = 3
    num_classes: int = 1000
    act_layer: Callable[[], nn.Module] = nn.GELU
    norm_layer: Callable[[int], nn.Module] = nn.LayerNorm
    mlp_ratio: tuple[float, ...] = (4.0, 4.0, 4.0)
    attn_drop_rate: tuple[float, ...] = (0.0, 0.0, 0.0)
    drop_rate: tuple[float, ...] = (0.0, 0.0, 0.0)
    drop_path_rate: tuple[float, ...] = (0.0, 0.0, 0.1)
    qkv_bias: tuple[bool, ...] = (True, True, True)
    cls_token: tuple[bool, ...] = (False, False, True)
    pos_embed: tuple[bool, ...] = (False, False, False)
    qkv_proj_method: tuple[str, ...] = ("dw_bn", "dw_bn", "dw_bn")
    kernel_qkv: tuple[int, ...] = (3, 3, 3)
    padding_q: tuple[int, ...] = (1, 1, 1)
    stride_q: tuple[int, ...] = (1, 1, 1)
    padding_kv: tuple[int, ...] = (1, 1, 1)
    stride_kv: tuple[int, ...] = (2, 2, 2)
    image_size: int = 224

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Broadcast scalars, normalise spellings and check every field (idempotent)."""
        n = positive_int("num_stages", self.num_stages)
        for name in PER_STAGE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str | bool | int | float):
                value = (value,) * n
            try:
                value = tuple(value)
            except TypeError:
                raise ConfigError(
                    f"{name} must be a sequence of length num_stages={n}, got {value!r}"
                ) from None
            if len(value) != n:
                raise ConfigError(f"{name} must have length num_stages={n}, got {len(value)}: {value!r}")
            setattr(self, name, value)
        for name in _POSITIVE_INT:
            for i, v in enumerate(getattr(self, name)):
                positive_int(f"{name}[{i}]", v)
        for name in _NON_NEGATIVE_INT:
            for i, v in enumerate(getattr(self, name)):
                non_negative_int(f"{name}[{i}]", v)
        for name in _RATES:
            setattr(
                self, name, tuple(probability(f"{name}[{i}]", v) for i, v in enumerate(getattr(self, name)))
            )
        for name in _FLAGS:
            for i, v in enumerate(getattr(self, name)):
                if not isinstance(v, bool):
                    raise ConfigError(f"{name}[{i}] must be a bool, got {v!r}")
        self.qkv_proj_method = tuple(
            choice(
                f"qkv_proj_method[{i}]",
                _METHOD_ALIASES.get(m, m) if isinstance(m, str) else m,
                QKV_PROJ_METHODS,
            )
            for i, m in enumerate(self.qkv_proj_method)
        )
        for i, (dim, ratio) in enumerate(zip(self.dim_embed, self.mlp_ratio)):
            divisible(f"dim_embed[{i}]", dim, f"num_heads[{i}]", self.num_heads[i])
            is_number = (
                isinstance(ratio, int | float) and not isinstance(ratio, bool) and math.isfinite(ratio)
            )
            if not is_number or int(dim * ratio) < 1:
                raise ConfigError(
                    f"mlp_ratio[{i}] must be a positive number (hidden width >= 1), got {ratio!r}"
                )
            if self.qkv_proj_method[i] == "avg" and self.padding_kv[i] > self.kernel_qkv[i] // 2:
                raise ConfigError(
                    f"padding_kv[{i}]={self.padding_kv[i]} exceeds half of kernel_qkv[{i}]="
                    f"{self.kernel_qkv[i]}, which AvgPool2d ('avg' projection) does not allow"
                )
        positive_int("in_channels", self.in_channels)
        non_negative_int("num_classes", self.num_classes)
        positive_int("image_size", self.image_size)
        for name in ("act_layer", "norm_layer"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"{name} must be a module class or factory, got {getattr(self, name)!r}")


class ConvEmbed(nn.Module):
    """Overlapping conv token embedding: ``Conv2d(k, s, p)`` then LayerNorm over channels, map in, map out."""

    def __init__(
        self,
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

    def __init__(self, dim: int, method: str, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.method = method
        if method == "dw_bn":
            self.conv: nn.Module = nn.Conv2d(dim, dim, kernel, stride, padding, bias=False, groups=dim)
            self.bn: nn.Module = nn.BatchNorm2d(dim)
        elif method == "avg":
            self.conv = nn.AvgPool2d(kernel, stride, padding, ceil_mode=True)
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
        self.conv_proj_q = ConvProjection(
            dim, "linear" if method == "avg" else method, kernel, stride_q, padding_q
        )
        self.conv_proj_k = ConvProjection(dim, method, kernel, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim, method, kernel, stride_kv, padding_kv)
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
        norm_layer: Callable[[int], nn.Module],
        drop_path: float | None,
        block_index: int,
        num_blocks: int,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = make_drop_path(drop_path, block_index, num_blocks)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CvTStage(nn.Module):
    """ConvEmbed -> tokens (+ optional class token) -> dropout -> blocks -> back to a map.

    Returns ``(map (B, D, H, W), cls (B, 1, D) or None)``.
    """

    def __init__(self, cfg: CvTConfig, i: int, in_channels: int) -> None:
        super().__init__()
        dim, depth = cfg.dim_embed[i], cfg.depth[i]
        self.dim = dim
        self.patch_embed = ConvEmbed(
            in_channels, dim, cfg.patch_size[i], cfg.patch_stride[i], cfg.patch_padding[i], cfg.norm_layer
        )
        self.has_cls_token = cfg.cls_token[i]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.has_cls_token else None
        self.pos_drop = nn.Dropout(cfg.drop_rate[i])
        # a stage with drop_path_rate 0 has no DropPath (the schedule update leaves it off, like the cv library)
        rate = cfg.drop_path_rate[i]
        rates = (
            [rate * j / (depth - 1) if depth > 1 else 0.0 for j in range(depth)]
            if rate > 0
            else [None] * depth
        )
        self.blocks = nn.ModuleList(
            ConvTransformerBlock(
                dim,
                ConvAttention(
                    dim,
                    cfg.num_heads[i],
                    cfg.qkv_bias[i],
                    cfg.attn_drop_rate[i],
                    cfg.drop_rate[i],
                    cfg.qkv_proj_method[i],
                    cfg.kernel_qkv[i],
                    cfg.stride_kv[i],
                    cfg.stride_q[i],
                    cfg.padding_kv[i],
                    cfg.padding_q[i],
                    self.has_cls_token,
                ),
                Mlp(
                    dim,
                    int(dim * cfg.mlp_ratio[i]),
                    cfg.act_layer,
                    drop=cfg.drop_rate[i],
                    out_drop=cfg.drop_rate[i],
                ),
                cfg.norm_layer,
                rates[j],
                block_index=j,
                num_blocks=depth,
            )
            for j in range(depth)
        )
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


class CvT(VisionModel):
    """Convolutional vision transformer built from a :class:`CvTConfig` (official ``cls_cvt`` semantics).

    Stages are attributes ``stage0 .. stage{n-1}`` (the official names, so official checkpoints load
    as-is; HF keys map by the renaming in SPEC §5.4). Head: when the last stage has a class token,
    ``LayerNorm(cls) -> Linear``; otherwise ``LayerNorm`` over the tokens, mean, ``Linear``.
    ``num_classes=0`` leaves the features (``head = Identity``).
    """

    fixed_resolution = False

    def __init__(self, config: CvTConfig) -> None:
        if not isinstance(config, CvTConfig):
            raise ConfigError(f"config must be a CvTConfig, got {type(config).__name__}")
        config.validate()
        super().__init__(config.in_channels, config.image_size, config.num_classes)
        self.config = config
        self.num_stages = config.num_stages
        self.num_features = config.dim_embed[-1]
        self.use_cls_head = config.cls_token[-1]
        in_ch = config.in_channels
        for i in range(config.num_stages):
            setattr(self, f"stage{i}", CvTStage(config, i, in_ch))
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
        GELU, the official ones with QuickGELU (SPEC §5.4). No parameters change."""
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
# keys map by the renaming in SPEC §5.4, one table read both ways: (HF suffix, our suffix) per block,
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
    dims: tuple[int, int, int], heads: tuple[int, int, int], depth: tuple[int, int, int], **extra: object
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
        "cvt_13",
        kwargs=_official((64, 192, 384), (1, 3, 6), (1, 2, 10)),
        reference="microsoft/CvT CvT-13 (HF microsoft/cvt-13)",
        reference_params_m=20.00,
        **_CVT,
    )
)
register_preset(
    Preset(
        "cvt_21",
        kwargs=_official((64, 192, 384), (1, 3, 6), (1, 4, 16)),
        reference="microsoft/CvT CvT-21 (HF microsoft/cvt-21)",
        reference_params_m=31.62,
        **_CVT,
    )
)
register_preset(
    Preset(
        "cvt_w24",
        kwargs=_official(
            (192, 768, 1024), (3, 12, 16), (2, 2, 20), drop_path_rate=(0.0, 0.0, 0.3), image_size=384
        ),
        reference="microsoft/CvT CvT-W24-384-22k (HF microsoft/cvt-w24-384-22k)",
        reference_params_m=277.20,
        **_CVT,
    )
)
register_alias("cvt", "cvt_13")
