"""DeepViT re-attention and CNN stem in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.deepvit import CNNStem, ReAttention
from deploykit.transforms.rewrites.base import Rewrite, fold_conv_bn, randomize_batchnorm_, register_rewrite


class ReAttentionFolded(nn.Module):
    """Head mixing as one 1x1 Conv over the head axis with BatchNorm and the re-attention scale folded in:
    ``Theta'[g, h] = s * gamma_g / sqrt(var_g + eps) * Theta[g, h]``, ``b'_g = s * (gamma_g (b_g - mu_g) /
    sqrt(var_g + eps) + beta_g)``."""

    def __init__(self, module: ReAttention) -> None:
        super().__init__()
        self.mix = fold_conv_bn(module.reatten_matrix, module.var_norm)
        self.mix.weight.mul_(module.scale)
        self.mix.bias.mul_(module.scale)

    def forward(self, attn: torch.Tensor) -> torch.Tensor:  # (B, H, N, N)
        return self.mix(attn)


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
        fixes=(
            "Re-attention is a 1x1 Conv over heads followed by BatchNorm2d over heads; TensorRT would run the "
            "BatchNormalization as a separate scale layer over the (B, H, N, N) maps. In eval mode BN is an "
            "affine map per head, so it (and the optional head_dim**-0.5 scale) folds exactly into the conv."
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
        fixes=(
            "The DeepViT-S/L stem has Conv->BN->ReLU twice; eval-mode BatchNorm folds exactly into the preceding "
            "convolution's weight and bias, removing two full-resolution BatchNormalization layers."
        ),
        source=CNNStem,
        convert=CNNStemFolded,
        example=lambda: (randomize_batchnorm_(CNNStem(16, 3, 24)), torch.randn(2, 3, 32, 32)),
    )
)
