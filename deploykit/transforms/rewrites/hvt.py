"""HVT token pooling in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.hvt import TokenPool
from deploykit.transforms.rewrites.base import Rewrite, RewriteKind, register_rewrite


class TokenPool2d(nn.Module):
    """1-D max-pool over tokens as ``MaxPool2d((k, 1), (s, 1))`` on the token map ``(B, 1, N, d)``: same
    windows, same max, and no transposes (the tokens stay where they are; the pool's "width" is the
    feature axis, which a ``(k, 1)`` window never mixes)."""

    def __init__(self, module: TokenPool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d((module.kernel_size, 1), (module.stride, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, d)
        return self.pool(x.unsqueeze(1)).squeeze(1)  # (B, 1, N, d) -> (B, 1, N', d) -> (B, N', d)


register_rewrite(
    Rewrite(
        name="token-maxpool-as-2d-pool",
        kind=RewriteKind.REQUIRED,
        fixes=(
            "Required for TensorRT: its ONNX parser documents MaxPool as 2D or 3D pooling only "
            "(trt_operators.json; the lint's pool-rank rule), so HVT's MaxPool1d over the token axis, "
            "exported as a MaxPool with a 1-D kernel, is rejected. Equivalent: a (k, 1) kernel with (s, 1) "
            "stride over the (B, 1, N, d) token map visits exactly the same windows of every feature. This "
            "form needs no transposes around the pool (the original's (B, N, d) <-> (B, d, N) pair; on ONNX "
            "Runtime CPU the 4-D transpose of a (B, d, 1, N) form cost ten times a plain one)."
        ),
        source=TokenPool,
        convert=TokenPool2d,
        example=lambda: (TokenPool(), torch.randn(2, 37, 8)),
    )
)
