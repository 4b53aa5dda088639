"""Feed-forward network and activations."""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation of the official CvT checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> out_drop``."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        out_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.out_drop = nn.Dropout(out_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_drop(self.fc2(self.drop(self.act(self.fc1(x)))))
