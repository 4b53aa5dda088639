"""The surface every family shares: ``forward_features -> forward_head``, ``num_classes``, the input
contract (size and normalization) and the stochastic-depth schedule update."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deploykit.core.errors import DeployKitError
from deploykit.models.layers.drop import update_stochastic_depth_rate

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputShapeError(DeployKitError, ValueError):
    """An input tensor whose rank, channels or resolution the model cannot take."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How to feed the model: ``input_size`` is ``(C, H, W)``; mean/std apply to [0, 1] pixels."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875


class VisionModel(nn.Module):
    """Base class of the five families.

    ``forward_features(x)`` returns the pooled feature vector ``(B, num_features)`` (after any final
    norm); ``forward_head(f)`` maps it to logits ``(B, num_classes)``; ``forward`` chains both.
    ``fixed_resolution`` models reject inputs of another spatial size with an :class:`InputShapeError`.
    """

    num_classes: int
    num_features: int
    fixed_resolution: bool = True

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_classes = num_classes
        self.data_config = DataConfig(input_size=(in_channels, image_size, image_size))
        self.preset_name: str | None = None
        #: constructor arguments given beyond the preset's (create_model sets them)
        self.preset_overrides: dict = {}

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.data_config.input_size

    def check_input(self, x: torch.Tensor) -> None:
        """Shape checks on static dimensions only (rank, channels, resolution): safe under tracing."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputShapeError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if self.fixed_resolution and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise InputShapeError(
                f"{type(self).__name__} was built for {self.image_size}x{self.image_size} inputs, "
                f"got {tuple(x.shape[-2:])[0]}x{tuple(x.shape[-2:])[1]}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def updateStochasticDepthRate(self, k: float = 0.05) -> None:  # noqa: N802 - documented name
        """Add ``block_index * k / (num_blocks - 1)`` to each block's drop-path rate (cumulative).

        A no-op when the model was built without stochastic depth.
        """
        update_stochastic_depth_rate(self, k)

    update_stochastic_depth_rate = updateStochasticDepthRate
