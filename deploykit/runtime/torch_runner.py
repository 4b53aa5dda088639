"""PyTorch runner (the fp32 reference)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    def __init__(self, model: nn.Module, name: str = "torch") -> None:
        self.model = model.eval()
        self.name = name

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
