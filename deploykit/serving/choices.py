"""The closed sets a Triton repository is written with (``deploykit triton`` offers them; cheap to import)."""

from __future__ import annotations

from deploykit.core.artifacts import Named


class Backend(Named):
    """What serves the main model: ONNX Runtime, a TensorRT engine, or ``model.py`` running the ONNX file
    with ONNX Runtime (the variant a CPU-only server can serve)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    PYTHON = "python"


class InstanceKind(Named):
    """Where the main model's instances run (its ``instance_group`` kind)."""

    CPU = "cpu"
    GPU = "gpu"
