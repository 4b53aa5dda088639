"""ConViT GPSA in export form."""

from __future__ import annotations

import torch
from torch import nn

from deploykit.models.convit import GPSA
from deploykit.transforms.rewrites.base import Rewrite, RewriteKind, register_rewrite


class GPSAConstantPositional(nn.Module):
    """GPSA with its input-independent part folded to constants.

    ``g * softmax(pos_proj(R))`` (1, H, N, N) and ``1 - g`` (1, H, 1, 1) are buffers computed once from the
    weights, q|k|v is one fused Linear (one MatMul instead of two), and the row renormalisation is
    dropped: both mixed terms are row-stochastic, so dividing by the row sum is an identity (to rounding).
    """

    def __init__(self, gpsa: GPSA) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.scale = gpsa.num_heads, gpsa.head_dim, gpsa.scale
        dim = gpsa.dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=gpsa.qk.bias is not None)
        self.qkv.weight.copy_(torch.cat([gpsa.qk.weight, gpsa.v.weight]))
        if gpsa.qk.bias is not None:
            self.qkv.bias.copy_(torch.cat([gpsa.qk.bias, gpsa.v.bias]))
        g = gpsa.gates()
        self.register_buffer("content_gate", (1.0 - g).detach().clone())  # (1, H, 1, 1)
        self.register_buffer("positional", (g * gpsa.positional_attention()).detach().clone())  # (1, H, N, N)
        self.proj = gpsa.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd)
        content = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        attn = content * self.content_gate + self.positional
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


def _example() -> tuple[nn.Module, torch.Tensor]:
    gpsa = GPSA(32, 4, grid_size=4, locality_strength=1.0)
    with torch.no_grad():
        gpsa.gating_param.normal_()
        gpsa.v.weight.normal_(std=0.1)
    return gpsa, torch.randn(3, 16, 32)


register_rewrite(
    Rewrite(
        name="gpsa-constant-positional-attention",
        kind=RewriteKind.OPTIMIZATION,
        fixes=(
            "Optimization: GPSA exports as ordinary MatMul/Softmax/Sigmoid ops that TensorRT's ONNX parser "
            "supports, but its positional attention softmax(pos_proj(R)) and sigmoid gates do not depend on "
            "the input and are recomputed every call from an (N, N, d_pos) table. Folding g*P and 1-g into "
            "constants saves, per block, that MatMul and Softmax, the Sigmoid, the no-op row renormalisation "
            "(ReduceSum + Div) and one of the two input projections (q|k|v fused; 71 -> 48 nodes on the "
            "example). Equivalent: both mixed terms are row-stochastic, so the renormalisation is an "
            "identity."
        ),
        source=GPSA,
        convert=GPSAConstantPositional,
        example=_example,
    )
)
