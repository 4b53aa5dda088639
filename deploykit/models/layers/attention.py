"""Multi-head self-attention with a fused q|k|v projection, an optional hook on the attention
probabilities (DeepViT's re-attention plugs in there) and an optional separate key/value context
(CeiT's single-query class-token attention)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deploykit.models.layers.checks import divisible


class Attention(nn.Module):
    """``softmax(q k^T / sqrt(d_head)) v`` over ``num_heads`` heads.

    ``qkv`` holds the q, k and v projections as three row blocks of one Linear (the timm / official
    layout). ``attn_transform`` maps the probabilities ``(B, H, Nq, Nk)`` before dropout
    (``Identity`` by default).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_transform: nn.Module | None = None,
        heads_name: str = "encoder_num_heads",
    ) -> None:
        super().__init__()
        divisible("d_model", dim, heads_name, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_transform = attn_transform if attn_transform is not None else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.qkv.weight, std=0.02)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        if qkv_bias:
            nn.init.zeros_(self.qkv.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x``, or queries from ``x`` with keys/values from ``context``."""
        B, N, C = x.shape
        if context is None:
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        else:
            # plain slices of the weight (not split()): they fold to constants in the exported graph
            w_q, w_kv = self.qkv.weight[:C], self.qkv.weight[C:]
            b_q, b_kv = (self.qkv.bias[:C], self.qkv.bias[C:]) if self.qkv.bias is not None else (None, None)
            q = self._heads(F.linear(x, w_q, b_q))
            M = context.shape[1]
            kv = F.linear(context, w_kv, b_kv).reshape(B, M, 2, self.num_heads, self.head_dim)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, M, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, Nq, Nk)
        attn = self.attn_drop(self.attn_transform(attn.softmax(dim=-1)))
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
