"""Patch embedding: ``'linear'`` (unfold + Linear, the cv layout) or ``'convolutional'`` (a registered,
trainable strided Conv2d). Both hold the same parameters: a Conv2d weight ``(D, C, p, p)`` reshaped to
``(D, C*p*p)`` is the Linear weight (channel-major patch vectors, ``index = c*p*p + i*p + j``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deploykit.models.layers.checks import choice

PATCHIFY_TECHNIQUES = ("linear", "convolutional", "conv")


class PatchEmbed(nn.Module):
    def __init__(
        self,
        *,
        patch_size: int,
        in_channels: int,
        dim: int,
        technique: str = "linear",
        norm: bool = True,
        bias: bool = True,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        choice("patchify_technique", technique, PATCHIFY_TECHNIQUES)
        self.patch_size = patch_size
        self.technique = "linear" if technique == "linear" else "convolutional"
        if self.technique == "linear":
            self.proj: nn.Module = nn.Linear(in_channels * patch_size * patch_size, dim, bias=bias)
        else:
            self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, bias=bias)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, (H//p)*(W//p), D)``; remainder pixels are dropped, as a strided conv does."""
        if self.technique == "linear":
            x = F.unfold(x, kernel_size=self.patch_size, stride=self.patch_size).transpose(
                1, 2
            )  # (B, N, C*p*p)
            x = self.proj(x)
        else:
            x = self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        return self.norm(x)
