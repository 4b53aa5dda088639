"""CvT's configuration: :class:`CvTConfig` (the documented lucid API: field names, order and defaults) and
its validation. Kept apart from the network in :mod:`deploykit.models.cvt` so each reads on its own."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models.layers.checks import choice, divisible, non_negative_int, positive_int, probability

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


@dataclass(kw_only=True)
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
            setattr(self, name, _per_stage(name, getattr(self, name), n))
        self._check_stage_values()
        for i in range(n):
            self._check_stage(i)
        positive_int("in_channels", self.in_channels)
        non_negative_int("num_classes", self.num_classes)
        positive_int("image_size", self.image_size)
        for name in ("act_layer", "norm_layer"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"{name} must be a module class or factory, got {getattr(self, name)!r}")

    def _check_stage_values(self) -> None:
        """Each per-stage value on its own: integers, rates, flags and the projection method."""
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

    def _check_stage(self, i: int) -> None:
        """The checks that relate two fields of stage ``i``."""
        dim, ratio = self.dim_embed[i], self.mlp_ratio[i]
        divisible(f"dim_embed[{i}]", dim, f"num_heads[{i}]", self.num_heads[i])
        is_number = isinstance(ratio, int | float) and not isinstance(ratio, bool) and math.isfinite(ratio)
        if not is_number or int(dim * ratio) < 1:
            raise ConfigError(f"mlp_ratio[{i}] must be a positive number (hidden width >= 1), got {ratio!r}")
        if self.qkv_proj_method[i] == "avg" and self.padding_kv[i] > self.kernel_qkv[i] // 2:
            raise ConfigError(
                f"padding_kv[{i}]={self.padding_kv[i]} exceeds half of kernel_qkv[{i}]="
                f"{self.kernel_qkv[i]}, which AvgPool2d ('avg' projection) does not allow"
            )


def _per_stage(name: str, value: object, num_stages: int) -> tuple:
    """``value`` as a tuple of length ``num_stages`` (a scalar is broadcast to every stage)."""
    if isinstance(value, str | bool | int | float):
        value = (value,) * num_stages
    try:
        value = tuple(value)
    except TypeError:
        raise ConfigError(
            f"{name} must be a sequence of length num_stages={num_stages}, got {value!r}"
        ) from None
    if len(value) != num_stages:
        raise ConfigError(f"{name} must have length num_stages={num_stages}, got {len(value)}: {value!r}")
    return value
