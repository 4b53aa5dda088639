"""Stochastic depth: DropPath, the linear per-block schedule, and the cumulative schedule update."""

from __future__ import annotations

import math

import torch
from torch import nn

from deploykit.core.errors import ConfigError
from deploykit.models.layers.checks import probability


class DropPath(nn.Module):
    """Drop the whole residual branch per sample with probability ``drop_prob`` (training only).

    ``block_index`` / ``num_blocks`` place the module in its encoder's schedule so that
    :func:`update_stochastic_depth_rate` can raise its rate by ``block_index * k / (num_blocks - 1)``;
    ``block_index=None`` keeps a fixed rate (e.g. CeiT's LCA block).
    """

    def __init__(
        self, drop_prob: float = 0.0, *, block_index: int | None = None, num_blocks: int = 1
    ) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.block_index = block_index
        self.num_blocks = num_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        if keep <= 0.0:  # the schedule update may push a rate to 1 or beyond: the branch is always dropped
            return x * 0.0
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.4f}, block_index={self.block_index}"


def drop_path_rates(stochastic_depth: bool, max_prob: float | None, num_blocks: int) -> list[float | None]:
    """Per-block rates ``max_prob * i / (L - 1)`` (a ramp from 0), or ``None`` everywhere when disabled."""
    if not stochastic_depth:
        return [None] * num_blocks
    if max_prob is None:
        raise ConfigError(
            "stochastic_depth_mp must be a number in [0, 1) when stochastic_depth=True, got None"
        )
    max_prob = probability("stochastic_depth_mp", max_prob)
    if num_blocks == 1:
        return [0.0]
    return [max_prob * i / (num_blocks - 1) for i in range(num_blocks)]


def make_drop_path(rate: float | None, *, block_index: int, num_blocks: int) -> nn.Module:
    """A scheduled DropPath, or Identity when stochastic depth is off (``rate is None``)."""
    if rate is None:
        return nn.Identity()
    return DropPath(rate, block_index=block_index, num_blocks=num_blocks)


def update_stochastic_depth_rate(model: nn.Module, k: float = 0.05) -> None:
    """Add ``block_index * k / (num_blocks - 1)`` to every scheduled DropPath of ``model``.

    Cumulative (each call adds again), no clamp, as documented; a no-op when stochastic depth is off.
    """
    if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k):
        raise ConfigError(f"k must be a finite number, got {k!r}")
    for module in model.modules():
        if isinstance(module, DropPath) and module.block_index is not None and module.num_blocks > 1:
            module.drop_prob += module.block_index * k / (module.num_blocks - 1)
