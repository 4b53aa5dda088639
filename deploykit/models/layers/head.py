"""Classifier heads: the cv tanh-MLP "pre-logits" head, or the single Linear of the reference models."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """``Linear(d, hidden) -> Tanh -> Dropout -> Linear(hidden, classes)`` when ``hidden`` is set,
    else ``Linear(d, classes)``; ``num_classes=0`` leaves the features (``Identity``)."""

    def __init__(
        self, dim: int, num_classes: int, *, hidden_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if hidden_dim is None:
            self.pre_logits: nn.Module = nn.Identity()
            width = dim
        else:
            self.pre_logits = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
            width = hidden_dim
        self.fc = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(x))
