"""One registry of named presets (frozen data) and family aliases.

``create_model(name, **overrides)`` builds a preset with the user's overrides winning;
``list_models(pattern)`` lists preset names (fnmatch pattern).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from deploykit.core.errors import ConfigError, UnknownModelError
from deploykit.models.base import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named configuration of a family's constructor, plus what the reference says about it."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    reference: str = ""
    #: trainable parameter count of the reference implementation, in millions, as rounded in the paper's or repository's table
    reference_params_m: float | None = None
    reference_params_decimals: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))


_PRESETS: dict[str, Preset] = {}
_ALIASES: dict[str, str] = {}


def register_preset(preset: Preset) -> Preset:
    if preset.name in _PRESETS or preset.name in _ALIASES:
        raise ConfigError(f"model name {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def register_alias(alias: str, target: str) -> None:
    if alias in _PRESETS or alias in _ALIASES:
        raise ConfigError(f"model name {alias!r} is already registered")
    if target not in _PRESETS:
        raise ConfigError(f"alias {alias!r} points to unknown preset {target!r}")
    _ALIASES[alias] = target


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(_PRESETS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def list_aliases() -> dict[str, str]:
    return dict(sorted(_ALIASES.items()))


def get_preset(name: str) -> Preset:
    key = _ALIASES.get(name, name)
    if key not in _PRESETS:
        known = list(_PRESETS) + list(_ALIASES)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; known families: {', '.join(sorted(_ALIASES))}"
        )
        raise UnknownModelError(f"unknown model {name!r}{hint} (`deploykit list` shows all presets)")
    return _PRESETS[key]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build preset ``name`` (or a family alias); keyword ``overrides`` replace preset values.

    Random weights: a checkpoint is loaded by :func:`deploykit.models.load_pretrained(name, path)
    <deploykit.models.pretrained.load_pretrained>`, which builds the preset at the classes and resolution
    the checkpoint says."""
    preset = get_preset(name)
    model = preset.builder(**{**preset.kwargs, **overrides})
    model.preset_name = preset.name
    #: the constructor arguments given beyond the preset's (an export records them to rebuild the model)
    model.preset_overrides = dict(overrides)
    model.data_config = type(model.data_config)(
        input_size=model.data_config.input_size,
        mean=preset.mean,
        std=preset.std,
        interpolation=preset.interpolation,
        crop_pct=preset.crop_pct,
    )
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def preset_parameter_count(name: str, **overrides: Any) -> int:
    """Parameter count of a preset without allocating its weights (built on the meta device)."""
    with torch.device("meta"):
        return count_parameters(create_model(name, **overrides))
