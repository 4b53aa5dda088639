"""Argument checks shared by every model constructor: each failure is a ConfigError naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Iterable

from deploykit.core.errors import ConfigError


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def probability(name: str, value: object) -> float:
    """A dropout / drop-path rate: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def choice(name: str, value: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value  # type: ignore[return-value]


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ConfigError(f"{name}={value} is not divisible by {by_name}={by}")


def optional_positive_float(name: str, value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


def vit_arguments(
    *,
    d_model: object,
    image_size: object,
    patch_size: object,
    encoder_mlp_d: object,
    encoder_num_heads: object,
    num_encoder_blocks: object,
    in_channels: object,
    num_classes: object,
    classifier_mlp_d: object,
    dropout: object,
    encoder_dropout: object,
    encoder_attention_dropout: object,
    encoder_projection_dropout: object,
    layer_scale: object,
) -> None:
    """The checks every patch-based ViT constructor of the cv API (ConViT, DeepViT, HPool-ViT) shares."""
    for name, value in (
        ("d_model", d_model),
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("encoder_mlp_d", encoder_mlp_d),
        ("encoder_num_heads", encoder_num_heads),
        ("num_encoder_blocks", num_encoder_blocks),
        ("in_channels", in_channels),
    ):
        positive_int(name, value)
    non_negative_int("num_classes", num_classes)
    if classifier_mlp_d is not None:
        positive_int("classifier_mlp_d", classifier_mlp_d)
    for name, value in (
        ("dropout", dropout),
        ("encoder_dropout", encoder_dropout),
        ("encoder_attention_dropout", encoder_attention_dropout),
        ("encoder_projection_dropout", encoder_projection_dropout),
    ):
        probability(name, value)
    optional_positive_float("layer_scale", layer_scale)
    divisible("image_size", image_size, "patch_size", patch_size)  # type: ignore[arg-type]
    divisible("d_model", d_model, "encoder_num_heads", encoder_num_heads)  # type: ignore[arg-type]
