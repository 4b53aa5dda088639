"""CeiT's argument checks, kept apart from the network in :mod:`deploykit.models.ceit`.

:func:`check_ceit_arguments` takes the constructor's checked arguments by name and checks them in a fixed
order (so the first bad argument is the one reported); each failure is a ConfigError naming the parameter.
"""

from __future__ import annotations

from deploykit.core.errors import ConfigError
from deploykit.models.layers.checks import (
    choice,
    divisible,
    non_negative_int,
    optional_positive_float,
    positive_int,
    probability,
)

LCA_LN_ORDERS = ("pre", "post")

_POSITIVE_INT = (
    "image_size",
    "d_model",
    "patch_size",
    "encoder_num_heads",
    "num_encoder_blocks",
    "i2t_out_channels",
    "i2t_conv_kernel_size",
    "i2t_conv_stride",
    "i2t_max_pool_kernel_size",
    "i2t_max_pool_stride",
    "leff_expand_ratio",
    "leff_depthwise_kernel",
    "leff_depthwise_stride",
    "lca_encoder_expansion_ratio",
    "lca_encoder_num_heads",
    "in_channels",
)
_NON_NEGATIVE_INT = ("num_classes", "leff_depthwise_padding", "i2t_conv_padding", "i2t_max_pool_padding")
_RATES = (
    "dropout",
    "encoder_dropout",
    "encoder_attention_dropout",
    "encoder_projection_dropout",
    "lca_encoder_dropout",
    "lca_encoder_attention_dropout",
    "lca_encoder_projection_dropout",
    "lca_encoder_stodepth_prob",
)
_OPTIONAL_POSITIVE = ("layer_scale", "lca_encoder_layer_scale", "norm_eps")
#: every name :func:`check_ceit_arguments` takes
CHECKED_ARGUMENTS = frozenset(
    (
        *_POSITIVE_INT,
        *_NON_NEGATIVE_INT,
        "classifier_mlp_d",
        *_RATES,
        *_OPTIONAL_POSITIVE,
        "lca_encoder_ln_order",
        "lca_include_last",
    )
)


def check_ceit_arguments(**arguments: object) -> None:
    """Check CeiT's arguments; ``arguments`` must hold exactly the names in :data:`CHECKED_ARGUMENTS`."""
    if arguments.keys() != CHECKED_ARGUMENTS:
        wrong = sorted(arguments.keys() ^ CHECKED_ARGUMENTS)
        raise TypeError(f"check_ceit_arguments: missing or unknown arguments {wrong}")
    a = arguments
    for name in _POSITIVE_INT:
        positive_int(name, a[name])
    for name in _NON_NEGATIVE_INT:
        non_negative_int(name, a[name])
    if a["classifier_mlp_d"] is not None:
        positive_int("classifier_mlp_d", a["classifier_mlp_d"])
    for name in _RATES:
        probability(name, a[name])
    for name in _OPTIONAL_POSITIVE:
        optional_positive_float(name, a[name])
    divisible("d_model", a["d_model"], "encoder_num_heads", a["encoder_num_heads"])
    divisible("d_model", a["d_model"], "lca_encoder_num_heads", a["lca_encoder_num_heads"])
    choice("lca_encoder_ln_order", a["lca_encoder_ln_order"], LCA_LN_ORDERS)
    _check_geometry(a)


def _check_geometry(a: dict[str, object]) -> None:
    """The checks that relate two or more arguments: LeFF keeps the grid, the stem's pool padding, LCA's
    key/value count."""
    kernel, stride, padding = (
        a["leff_depthwise_kernel"],
        a["leff_depthwise_stride"],
        a["leff_depthwise_padding"],
    )
    if stride != 1 or kernel != 2 * padding + 1:
        raise ConfigError(
            "LeFF's depthwise conv must keep the token grid size: need leff_depthwise_stride=1 and "
            "leff_depthwise_kernel = 2 * leff_depthwise_padding + 1, got leff_depthwise_kernel="
            f"{kernel}, leff_depthwise_stride={stride}, leff_depthwise_padding={padding}"
        )
    if 2 * a["i2t_max_pool_padding"] > a["i2t_max_pool_kernel_size"]:
        raise ConfigError(
            f"i2t_max_pool_padding={a['i2t_max_pool_padding']} must be at most half of "
            f"i2t_max_pool_kernel_size={a['i2t_max_pool_kernel_size']}"
        )
    if not a["lca_include_last"] and a["num_encoder_blocks"] < 2:
        raise ConfigError(
            "num_encoder_blocks must be at least 2 when the LCA keys/values exclude the last class token "
            f"(lca_include_last=False), got {a['num_encoder_blocks']}"
        )
