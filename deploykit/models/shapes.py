"""What a checkpoint says about the model it was trained as: its number of classes (the classifier head's
rows; none at all for a headless feature extractor) and, where the family has a position embedding
(ConViT, CeiT, DeepViT, HVT), its input resolution (the embedding's token grid). CvT has no position
embedding and takes any size.

The keys are found on the preset itself (built on the meta device, no memory): the head's weight is the
``head.*`` matrix with one row per class, the grid is the first 3-D ``*pos_embed`` with its token count
``grid**2`` plus any class tokens. The checkpoint must already be in deploykit's layout
(:mod:`deploykit.models.pretrained` converts the reference layouts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from deploykit.core.errors import WeightsError
from deploykit.models.registry import create_model, get_preset

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InferredArgs:
    """``num_classes`` (0: headless) and ``image_size`` (``None``: the family takes any size) read from a
    checkpoint, with the key and shape each was read from (``sources``)."""

    num_classes: int
    image_size: int | None
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"num_classes": self.num_classes, "image_size": self.image_size, "from": dict(self.sources)}


@dataclass(frozen=True)
class _Layout:
    head_key: str  # the classifier's weight: (classes, features)
    pos_key: str | None  # the first position embedding (1, tokens, dim), None when the family has none
    extra_tokens: int  # tokens besides the grid in pos_key (class tokens)
    stride: int  # input pixels per grid cell
    head_prefix: str  # every key of the classifier head


def _layout(preset: str, architecture: dict | None = None) -> _Layout:
    with torch.device("meta"):
        model = create_model(preset, **(architecture or {}))
    state = model.state_dict()
    rows = [
        k
        for k, v in state.items()
        if k.startswith("head.") and v.ndim == 2 and v.shape[0] == model.num_classes
    ]
    if not rows:  # pragma: no cover - every registered preset has a classifier head
        raise WeightsError(f"{preset}: no classifier weight found among its head.* keys")
    head_key = rows[-1]
    pos = next((k for k, v in state.items() if k.endswith("pos_embed") and v.ndim == 3), None)
    extra = stride = 0
    if pos is not None:
        tokens = state[pos].shape[1]
        grid = math.isqrt(tokens)
        extra, stride = tokens - grid * grid, model.image_size // grid
    return _Layout(head_key, pos, extra, stride, head_key.rsplit(".", 1)[0] + ".")


def infer_model_args(preset: str, state: StateDict, architecture: dict | None = None) -> InferredArgs:
    """The number of classes and input resolution of the model ``state`` (deploykit layout) belongs to,
    for the architecture of ``preset`` (with ``architecture``'s constructor overrides)."""
    layout = _layout(preset, architecture)
    sources: dict[str, str] = {}
    head = state.get(layout.head_key)
    if head is not None:
        num_classes = int(head.shape[0])
        sources["num_classes"] = f"{layout.head_key} {tuple(head.shape)}"
    elif any(k.startswith(layout.head_prefix) for k in state):
        raise WeightsError(f"the checkpoint has {layout.head_prefix}* keys but no {layout.head_key}")
    else:
        num_classes = 0
        sources["num_classes"] = f"no {layout.head_key}: a headless checkpoint (features)"
    image_size = None
    if layout.pos_key is not None and layout.pos_key in state:
        tokens = int(state[layout.pos_key].shape[1])
        grid = math.isqrt(max(tokens - layout.extra_tokens, 0))
        if grid < 1 or grid * grid != tokens - layout.extra_tokens:
            raise WeightsError(
                f"{layout.pos_key} has {tokens} tokens: not a square grid of patches"
                f"{' plus a class token' if layout.extra_tokens else ''} ({get_preset(preset).name})"
            )
        image_size = grid * layout.stride
        sources["image_size"] = (
            f"{layout.pos_key} {tuple(state[layout.pos_key].shape)}: a {grid}x{grid} grid of "
            f"{layout.stride}-pixel patches"
        )
    return InferredArgs(num_classes, image_size, sources)
