"""Rewrites of shared layers."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.layers.patch_embed import PatchEmbed
from deploykit.transforms.rewrites.base import Rewrite, RewriteKind, register_rewrite


class StridedConvPatchEmbed(nn.Module):
    """``norm(Conv2d(k=p, s=p)(x))`` flattened to tokens: the export form of a ``'linear'`` PatchEmbed."""

    def __init__(self, module: PatchEmbed) -> None:
        super().__init__()
        lin: nn.Linear = module.proj
        p = module.patch_size
        dim, patch_dim = lin.weight.shape
        self.proj = nn.Conv2d(patch_dim // (p * p), dim, p, stride=p, bias=lin.bias is not None)
        self.proj.weight.copy_(lin.weight.reshape(self.proj.weight.shape))  # channel-major = (C, p, p)
        if lin.bias is not None:
            self.proj.bias.copy_(lin.bias)
        self.norm = module.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, N, D)


def _patchify_as_conv(module: PatchEmbed) -> nn.Module | None:
    return StridedConvPatchEmbed(module) if module.technique == "linear" else None


register_rewrite(
    Rewrite(
        name="unfold-patchify-as-strided-conv",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: F.unfold (im2col) exports as an index chain (Pad, Range, Gather, Unsqueeze, "
            "Concat) whose ops TensorRT's ONNX parser all supports, so the original deploys; the rewrite "
            "replaces the chain and the Linear with one convolution (49 -> 11 nodes on the example). "
            "Equivalent: a Linear over channel-major p x p patch vectors is exactly a Conv2d(kernel=p, "
            "stride=p) whose weight is the Linear weight reshaped to (D, C, p, p)."
        ),
        source=PatchEmbed,
        convert=_patchify_as_conv,
        example=lambda: (
            PatchEmbed(patch_size=4, in_channels=3, dim=16, technique="linear", norm=True),
            torch.randn(2, 3, 16, 16),
        ),
    )
)
