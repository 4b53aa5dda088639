"""CeiT image-to-tokens stem and LeFF in export form."""

from __future__ import annotations

import math

import torch
from torch import nn

from deploykit.models.ceit import Image2Tokens, LeFF
from deploykit.transforms.rewrites.base import (
    Rewrite,
    RewriteKind,
    fold_conv_bn,
    randomize_batchnorm_,
    register_rewrite,
)


class Image2TokensFolded(nn.Module):
    """I2T stem with its BatchNorm folded into the convolution: ``MaxPool(Conv'(x))``."""

    def __init__(self, module: Image2Tokens) -> None:
        super().__init__()
        self.conv = fold_conv_bn(module.conv, module.bn)
        self.pool = module.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class LeFFFolded(nn.Module):
    """LeFF as ``Conv1x1' -> GELU -> DWConv' [-> PW'] -> GELU -> Conv1x1' [-> GELU]`` with every BatchNorm
    folded into the convolution before it. The token grid side is a static Python int under tracing."""

    def __init__(self, module: LeFF) -> None:
        super().__init__()
        self.conv1 = fold_conv_bn(module.conv1, module.bn1)
        if isinstance(module.pointwise, nn.Conv2d):
            self.conv2: nn.Module = module.conv2
            self.pointwise: nn.Module = fold_conv_bn(module.pointwise, module.bn2)
        else:
            self.conv2 = fold_conv_bn(module.conv2, module.bn2)
            self.pointwise = nn.Identity()
        self.conv3 = fold_conv_bn(module.conv3, module.bn3)
        self.act = nn.GELU()
        self.out_act = module.out_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N1, C = x.shape
        side = math.isqrt(N1 - 1)
        cls, tokens = x[:, :1], x[:, 1:]
        # reshape before the transpose (and transpose before the reshape on the way back): ONNX Runtime's
        # NCHWc layout pass folds a channels-last Transpose next to a convolution into its reorder
        t = tokens.reshape(B, side, side, C).permute(0, 3, 1, 2)  # (B, d, h, w)
        t = self.act(self.conv1(t))
        t = self.act(self.pointwise(self.conv2(t)))
        t = self.out_act(self.conv3(t))  # (B, d, h, w)
        return torch.cat([cls, t.permute(0, 2, 3, 1).reshape(B, side * side, C)], dim=1)  # (B, 1 + N, d)


register_rewrite(
    Rewrite(
        name="ceit-i2t-folded-batchnorm",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: the image-to-tokens stem is Conv->BatchNorm2d->MaxPool, and TensorRT's ONNX parser"
            " supports BatchNormalization, so the original deploys. Folding removes the BatchNormalization "
            "node and the Expand/CastLike nodes the exporter emits for it (9 -> 2 nodes on the example); "
            "TensorRT and ONNX Runtime can fuse Conv+BatchNorm themselves, so the saving is mainly in the "
            "graph. Equivalent: eval-mode BatchNorm is a per-channel affine map and folds exactly into the "
            "conv's weight and a bias."
        ),
        source=Image2Tokens,
        convert=Image2TokensFolded,
        example=lambda: (
            randomize_batchnorm_(
                Image2Tokens(
                    in_channels=3,
                    out_channels=8,
                    kernel_size=7,
                    stride=2,
                    padding=3,
                    bias=False,
                    pool_kernel_size=3,
                    pool_stride=2,
                    pool_padding=1,
                )
            ),
            torch.randn(2, 3, 32, 32),
        ),
    )
)
register_rewrite(
    Rewrite(
        name="ceit-leff-folded-batchnorm",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: LeFF runs three convolutions each followed by BatchNorm2d on the token map; "
            "TensorRT's ONNX parser supports BatchNormalization, so the original deploys. Folding removes "
            "three BatchNormalization nodes per block (36 in ceit_tiny), and the tokens enter and leave the "
            "map channels-last (reshape, then transpose), a form ONNX Runtime folds into its NCHWc reorders "
            "(two Transposes fewer per block). Equivalent: eval-mode BatchNorm is a per-channel affine map "
            "and folds exactly into the preceding conv (the pointwise conv when the depthwise-separable "
            "option is on); the token order is the same row-major grid either way."
        ),
        source=LeFF,
        convert=LeFFFolded,
        example=lambda: (
            randomize_batchnorm_(
                LeFF(8, expand_ratio=4, kernel_size=3, padding=1, separable=True, out_act=True)
            ),
            torch.randn(2, 17, 8),
        ),
    )
)
