"""DeepViT re-attention and CNN stem in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.deepvit import CNNStem, ReAttention
from deploykit.transforms.rewrites.base import (
    Rewrite,
    RewriteKind,
    fold_conv_bn,
    randomize_batchnorm_,
    register_rewrite,
)


class ReAttentionFolded(nn.Module):
    """Head mixing as one ``H x H`` MatMul over the head axis with BatchNorm and the re-attention scale
    folded in: ``Theta'[g, h] = s * gamma_g / sqrt(var_g + eps) * Theta[g, h]``, ``b'_g = s * (gamma_g (b_g
    - mu_g) / sqrt(var_g + eps) + beta_g)``; ``A' = Theta' @ A.flatten(2) + b'`` on ``(B, H, N * M)``."""

    def __init__(self, module: ReAttention) -> None:
        super().__init__()
        conv = fold_conv_bn(module.reatten_matrix, module.var_norm)
        heads = conv.out_channels
        self.weight = nn.Parameter(conv.weight.reshape(heads, heads) * module.scale, requires_grad=False)
        self.bias = nn.Parameter(conv.bias.reshape(heads, 1, 1) * module.scale, requires_grad=False)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:  # (B, H, N, M)
        heads, n, m = attn.shape[1:]  # static under tracing: constant Reshape targets, no shape arithmetic
        return torch.matmul(self.weight, attn.reshape(-1, heads, n * m)).reshape(-1, heads, n, m) + self.bias


class CNNStemFolded(nn.Module):
    """DeepViT-S/L stem with both BatchNorms folded into their convolutions."""

    def __init__(self, stem: CNNStem) -> None:
        super().__init__()
        self.conv1 = fold_conv_bn(stem.conv1, stem.bn1)
        self.conv2 = fold_conv_bn(stem.conv2, stem.bn2)
        self.relu = nn.ReLU()
        self.proj = stem.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


register_rewrite(
    Rewrite(
        name="reattention-folded-batchnorm",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: re-attention is a 1x1 Conv over heads, BatchNorm2d over heads and an optional "
            "scale Mul, all of which TensorRT's ONNX parser supports, so the original deploys. Folding "
            "removes the BatchNormalization and Mul over the (B, H, N, N) attention maps, and the mixing is "
            "an H x H MatMul over the flattened maps instead of a 1x1 Conv: on ONNX Runtime CPU the Conv "
            "over H channels ran in the blocked NCHWc layout and paid a reorder of every attention map back "
            "(docs/measured.md, against the naive route). Equivalent: in eval mode BN is an "
            "affine map per head, so it and the head_dim**-0.5 scale fold exactly into the mixing matrix "
            "and a bias; a 1x1 conv over channels is that matrix applied at every position."
        ),
        source=ReAttention,
        convert=ReAttentionFolded,
        example=lambda: (
            randomize_batchnorm_(ReAttention(4, scale=0.3)),
            torch.softmax(torch.randn(2, 4, 9, 9), dim=-1),
        ),
    )
)
register_rewrite(
    Rewrite(
        name="cnn-stem-folded-batchnorm",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: the DeepViT-S/L stem is Conv->BatchNorm2d->ReLU twice, which TensorRT's ONNX "
            "parser supports, so the original deploys. Folding removes two full-resolution BatchNormalization"
            " nodes and the Expand/CastLike nodes the exporter emits for them. Equivalent: eval-mode "
            "BatchNorm folds exactly into the preceding convolution's weight and bias."
        ),
        source=CNNStem,
        convert=CNNStemFolded,
        example=lambda: (
            randomize_batchnorm_(CNNStem(patch_size=16, in_channels=3, dim=24)),
            torch.randn(2, 3, 32, 32),
        ),
    )
)
