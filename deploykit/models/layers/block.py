"""Transformer encoder block and encoder, wired by ``ln_order``:

* ``'post'``: ``y = LN1(x + A(x))``; ``out = LN2(y + F(y))``.
* ``'pre'``: ``y = x + A(LN1(x))``; ``out = y + F(LN2(y))`` (no final LayerNorm of its own).
* ``'residual'`` (dual residual, "ResiDual"): streams ``(x, r)`` with ``r0 = x0``; per block
  ``a = A(x); x = LN1(x + a); r = r + a; m = F(x); x = LN2(x + m); r = r + m``;
  the encoder returns ``x_L + LN_final(r_L)``.

``A`` and ``F`` are ``DropPath(LayerScale(sublayer(.)))``. Models that act between blocks (insert a class
token, pool tokens) carry the streams as a tuple and map their operation over every stream, so the
dual-residual stream is never dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deploykit.models.layers.checks import choice
from deploykit.models.layers.drop import drop_path_rates, make_drop_path
from deploykit.models.layers.layer_scale import make_layer_scale

LN_ORDERS = ("residual", "pre", "post")
Streams = tuple[torch.Tensor, ...]


class Block(nn.Module):
    """``attn`` then ``mlp``, each a residual branch with LayerNorm placed by ``ln_order``.

    ``residual_scale`` (DeepViT-S/L "scale_adjustment", pre-LN only): ``x + branch(LN(s*x)) / s``.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp: nn.Module,
        *,
        ln_order: str = "pre",
        layer_scale: float | None = None,
        drop_path: float | None = None,
        block_index: int = 0,
        num_blocks: int = 1,
        norm_eps: float = 1e-5,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.ln_order = choice("ln_order", ln_order, LN_ORDERS)
        self.residual_scale = residual_scale
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn
        self.ls1 = make_layer_scale(dim, layer_scale)
        self.drop_path1 = make_drop_path(drop_path, block_index=block_index, num_blocks=num_blocks)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = mlp
        self.ls2 = make_layer_scale(dim, layer_scale)
        self.drop_path2 = make_drop_path(drop_path, block_index=block_index, num_blocks=num_blocks)

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path1(self.ls1(self.attn(x)))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path2(self.ls2(self.mlp(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-stream orders (``'pre'``, ``'post'``)."""
        if self.ln_order == "post":
            x = self.norm1(x + self._attn_branch(x))
            return self.norm2(x + self._mlp_branch(x))
        s = self.residual_scale
        if s != 1.0:
            x = x + self._attn_branch(self.norm1(x * s)) / s
            return x + self._mlp_branch(self.norm2(x * s)) / s
        x = x + self._attn_branch(self.norm1(x))
        return x + self._mlp_branch(self.norm2(x))

    def forward_dual(self, x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual-residual order: sublayers read the post-LN stream ``x``; ``r`` accumulates raw branches."""
        a = self._attn_branch(x)
        x = self.norm1(x + a)
        r = r + a
        m = self._mlp_branch(x)
        x = self.norm2(x + m)
        return x, r + m

    def step(self, streams: Streams) -> Streams:
        if len(streams) == 2:
            return self.forward_dual(*streams)
        return (self(streams[0]),)


class Encoder(nn.Module):
    """A stack of blocks sharing one ``ln_order``; owns the dual-residual final LayerNorm."""

    def __init__(self, blocks: list[Block], dim: int, *, ln_order: str, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_order = choice("ln_order", ln_order, LN_ORDERS)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(dim, eps=norm_eps) if ln_order == "residual" else nn.Identity()

    @classmethod
    def build(
        cls,
        *,
        dim: int,
        depth: int,
        attn: Callable[[int], nn.Module],
        mlp: Callable[[int], nn.Module],
        ln_order: str,
        layer_scale: float | None = None,
        stochastic_depth: bool = False,
        stochastic_depth_mp: float | None = None,
        norm_eps: float = 1e-5,
        residual_scale: float = 1.0,
    ) -> Encoder:
        """``depth`` blocks whose sublayers come from ``attn(i)`` / ``mlp(i)``, with the linear drop-path
        schedule (``stochastic_depth_mp * i / (depth - 1)``) every family shares."""
        rates = drop_path_rates(stochastic_depth, stochastic_depth_mp, depth)
        blocks = [
            Block(
                dim,
                attn(i),
                mlp(i),
                ln_order=ln_order,
                layer_scale=layer_scale,
                drop_path=rates[i],
                block_index=i,
                num_blocks=depth,
                norm_eps=norm_eps,
                residual_scale=residual_scale,
            )
            for i in range(depth)
        ]
        return cls(blocks, dim, ln_order=ln_order, norm_eps=norm_eps)

    def start(self, x: torch.Tensor) -> Streams:
        return (x, x) if self.ln_order == "residual" else (x,)

    def finish(self, streams: Streams) -> torch.Tensor:
        if self.ln_order == "residual":
            x, r = streams
            return x + self.final_norm(r)
        return streams[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = self.start(x)
        for blk in self.blocks:
            streams = blk.step(streams)
        return self.finish(streams)
