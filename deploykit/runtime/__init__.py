"""Runners: one small interface over PyTorch, ONNX Runtime and TensorRT (heavy imports are lazy)."""

from deploykit.runtime.base import Runner, run_batched

__all__ = ["Runner", "run_batched"]
