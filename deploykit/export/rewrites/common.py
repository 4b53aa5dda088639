"""Rewrites of shared layers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from deploykit.export.rewrites.base import Rewrite, register_rewrite
from deploykit.models.layers.patch_embed import PatchEmbed


def _patchify_as_conv(module: PatchEmbed) -> PatchEmbed | None:
    if module.technique != "linear":
        return None
    lin: nn.Linear = module.proj
    p = module.patch_size
    dim, patch_dim = lin.weight.shape
    conv = nn.Conv2d(patch_dim // (p * p), dim, p, stride=p, bias=lin.bias is not None)
    conv.weight.copy_(lin.weight.reshape(conv.weight.shape))  # channel-major patch vector = (C, p, p)
    if lin.bias is not None:
        conv.bias.copy_(lin.bias)
    new = copy.copy(module)  # shallow: shares norm; proj swapped below on the copy only
    new._modules = dict(module._modules)
    new.proj = conv
    new.technique = "convolutional"
    return new


register_rewrite(Rewrite(
    name="unfold-patchify-as-strided-conv",
    fixes=(
        "F.unfold (im2col) exports as Pad/Gather/Range index chains that TensorRT handles poorly. A Linear "
        "over channel-major p x p patch vectors is exactly a Conv2d(kernel=p, stride=p) whose weight is the "
        "Linear weight reshaped to (D, C, p, p)."
    ),
    source=PatchEmbed,
    convert=_patchify_as_conv,
    example=lambda: (PatchEmbed(4, 3, 16, "linear", norm=True), torch.randn(2, 3, 16, 16)),
))
