"""HVT token pooling in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.hvt import TokenPool
from deploykit.transforms.rewrites.base import Rewrite, RewriteKind, register_rewrite


class TokenPool2d(nn.Module):
    """1-D max-pool over tokens as ``MaxPool2d((1, k), (1, s))`` on ``(B, d, 1, N)``: same windows, same max."""

    def __init__(self, module: TokenPool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d((1, module.kernel_size), (1, module.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d)
        x = self.pool(x.transpose(1, 2).unsqueeze(2))  # (B, d, 1, N')
        return x.squeeze(2).transpose(1, 2)  # (B, N', d)


register_rewrite(
    Rewrite(
        name="token-maxpool-as-2d-pool",
        kind=RewriteKind.REQUIRED,
        fixes=(
            "Required for TensorRT: its ONNX parser documents MaxPool as 2D or 3D pooling only "
            "(trt_operators.json; the lint's pool-rank rule), so HVT's MaxPool1d over the token axis, "
            "exported as a MaxPool with a 1-D kernel, is rejected. Equivalent: a (1, k) kernel with (1, s) "
            "stride over a (B, d, 1, N) map visits exactly the same windows."
        ),
        source=TokenPool,
        convert=TokenPool2d,
        example=lambda: (TokenPool(), torch.randn(2, 37, 8)),
    )
)
