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


#: Triton's TensorRT backend loads a version-compatible plan (one that embeds TensorRT's lean runtime, host
#: code it runs) only when the whole server is started with this backend option (tensorrt_backend README,
#: "Command-line Options"); there is no per-model setting in config.pbtxt
VERSION_COMPATIBLE_ARG = "--backend-config=tensorrt,version-compatible=true"
#: the config.pbtxt parameter (``"true"``) with which a repository marks a model whose plan needs that
#: option: Triton ignores it, ``deploykit serve`` reads it and passes :data:`VERSION_COMPATIBLE_ARG`
VERSION_COMPATIBLE_PARAM = "version_compatible"
