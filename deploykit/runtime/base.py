"""The runner interface: ``run(x) -> logits`` on numpy float32 batches; a comparator is separate."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x``: float32 ``(B, C, H, W)``; returns the model's logits ``(B, classes)`` as float32."""
        ...


def run_batched(runner: Runner, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``x`` in chunks of at most ``batch_size`` (the artifact's maximum batch) and concatenate."""
    outs = [runner.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)
