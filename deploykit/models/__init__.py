"""The five model families, one registry.

>>> from deploykit.models import create_model, list_models
>>> model = create_model("cvt_13")

Owns: the model definitions, presets, registry and checkpoint layouts.
May import: core (and torch)."""

from deploykit.models.base import DataConfig, InputShapeError, VisionModel
from deploykit.models.registry import (
    Preset,
    count_parameters,
    create_model,
    get_preset,
    list_aliases,
    list_models,
    preset_parameter_count,
    register_alias,
    register_preset,
)

# importing a family module registers its presets
from deploykit.models.ceit import CeiT  # noqa: E402  isort: skip
from deploykit.models.convit import ConViT  # noqa: E402  isort: skip
from deploykit.models.cvt import CvT, CvTConfig  # noqa: E402  isort: skip
from deploykit.models.deepvit import DeepViT  # noqa: E402  isort: skip
from deploykit.models.hvt import HPool_ViT, hpool_vit  # noqa: E402  isort: skip
from deploykit.models.pretrained import load_pretrained  # noqa: E402  isort: skip

convit = ConViT
deep_vit = DeepViT

__all__ = [
    "CeiT",
    "ConViT",
    "CvT",
    "CvTConfig",
    "DataConfig",
    "DeepViT",
    "HPool_ViT",
    "InputShapeError",
    "Preset",
    "VisionModel",
    "count_parameters",
    "hpool_vit",
    "create_model",
    "get_preset",
    "list_aliases",
    "list_models",
    "load_pretrained",
    "preset_parameter_count",
    "register_alias",
    "register_preset",
]
