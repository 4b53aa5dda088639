"""Building blocks shared by the five families (one concept per file)."""

from deploykit.models.layers.attention import Attention
from deploykit.models.layers.block import LN_ORDERS, Block, Encoder, Streams
from deploykit.models.layers.drop import (
    DropPath,
    drop_path_rates,
    make_drop_path,
    update_stochastic_depth_rate,
)
from deploykit.models.layers.head import ClassifierHead
from deploykit.models.layers.layer_scale import LayerScale, make_layer_scale
from deploykit.models.layers.mlp import Mlp, QuickGELU
from deploykit.models.layers.patch_embed import PATCHIFY_TECHNIQUES, PatchEmbed

__all__ = [
    "LN_ORDERS",
    "PATCHIFY_TECHNIQUES",
    "Attention",
    "Block",
    "ClassifierHead",
    "DropPath",
    "Encoder",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "QuickGELU",
    "Streams",
    "drop_path_rates",
    "make_drop_path",
    "make_layer_scale",
    "update_stochastic_depth_rate",
]
