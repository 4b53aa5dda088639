"""Runners (one small interface over PyTorch, ONNX Runtime and TensorRT; heavy imports are lazy) and
:func:`load`, an exported artifact as a classifier (``.predict(images)``, ``.run(batch)``)."""

from deploykit.runtime.base import Runner, run_batched
from deploykit.runtime.predictor import Prediction, Predictor, load

__all__ = ["Prediction", "Predictor", "Runner", "load", "run_batched"]
