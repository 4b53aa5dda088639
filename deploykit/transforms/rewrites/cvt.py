"""CvT convolutional projections in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.cvt import ConvProjection
from deploykit.transforms.rewrites.base import (
    Rewrite,
    RewriteKind,
    fold_conv_bn,
    randomize_batchnorm_,
    register_rewrite,
)


class ConvProjectionFolded(nn.Module):
    """Depthwise Conv + BatchNorm as one depthwise Conv with bias; then flatten to tokens."""

    def __init__(self, module: ConvProjection) -> None:
        super().__init__()
        self.conv = fold_conv_bn(module.conv, module.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).transpose(1, 2)  # (B, H'W', C)


def _convert(module: ConvProjection) -> nn.Module | None:
    return ConvProjectionFolded(module) if module.method == "dw_bn" else None


register_rewrite(
    Rewrite(
        name="cvt-depthwise-projection-folded-batchnorm",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: every CvT q/k/v projection is a depthwise Conv followed by BatchNorm2d, which "
            "TensorRT's ONNX parser supports, so the original deploys. Folding removes the BatchNormalization"
            " nodes (3 per block, 39 in CvT-13) and the Expand/CastLike nodes the exporter emits for them. "
            "Equivalent: eval-mode BatchNorm is a per-channel affine map, so it folds exactly into the "
            "depthwise conv's weight and a new bias."
        ),
        source=ConvProjection,
        convert=_convert,
        example=lambda: (
            randomize_batchnorm_(ConvProjection(8, "dw_bn", kernel=3, stride=2, padding=1)),
            torch.randn(2, 8, 7, 7),
        ),
    )
)
