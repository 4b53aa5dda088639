"""Registered export rewrites (importing a family's module registers its rewrites)."""

from deploykit.transforms.rewrites import ceit, common, convit, cvt, deepvit, hvt  # noqa: F401  (registration)
from deploykit.transforms.rewrites.base import (
    REWRITES,
    Rewrite,
    RewriteKind,
    RewriteRecord,
    apply_rewrites,
    fold_conv_bn,
    randomize_batchnorm_,
    register_rewrite,
)

__all__ = [
    "REWRITES",
    "Rewrite",
    "RewriteKind",
    "RewriteRecord",
    "apply_rewrites",
    "fold_conv_bn",
    "randomize_batchnorm_",
    "register_rewrite",
]
