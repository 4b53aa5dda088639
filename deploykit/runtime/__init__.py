"""Runners: one small interface (:class:`Runner`) over PyTorch and ONNX Runtime (the TensorRT runner lives in
:mod:`deploykit.engine`), the preprocessing an artifact records, and the postprocessing from logits to classes.

Owns: runners, preprocessing, postprocessing. May import: ``deploykit.core`` (and torch, lazily, in the torch
runner only)."""

from deploykit.runtime.base import Runner, run_batched

__all__ = ["Runner", "run_batched"]
