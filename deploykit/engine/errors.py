"""The engine stage's errors, shared by the builder, the engine inspection and the runner.

(Without TensorRT or a GPU the stage raises :class:`~deploykit.core.errors.EngineUnavailableError`, exit
code 3, from :func:`~deploykit.engine.device.require_tensorrt`.)
"""

from __future__ import annotations

from deploykit.core.errors import DeployKitError


class EngineError(DeployKitError):
    """The engine stage failed: the ONNX parser or the builder rejected the model."""

    exit_code = 2


class EnginePrecisionError(EngineError):
    """An engine was built but is not the precision that was asked for (an FP16 graph came out FP32)."""

    exit_code = 1
