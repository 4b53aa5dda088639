"""The TensorRT engine stage (TensorRT 10.3+ and 11.x): build (builder.py, reading the built engine back
through its inspector: inspection.py), run (runner.py), or write the trtexec script (script.py) when this
machine has no TensorRT or GPU (device.py says whether it has, and reads the device's facts: CUDA, GPU,
Jetson); whether an engine can run here, from its sidecar, before TensorRT loads it (compat.py). Nothing
here imports ``tensorrt`` at import time.

Owns: everything that names a TensorRT API.
May import: core, runtime."""

from deploykit.engine.builder import FP16_SHARE_MIN, EngineResult, build_engine, onnx_input
from deploykit.engine.device import tensorrt_available
from deploykit.engine.errors import EngineError, EnginePrecisionError
from deploykit.engine.inspection import fp16_layer_share
from deploykit.engine.script import write_build_script

__all__ = [
    "FP16_SHARE_MIN",
    "EngineError",
    "EnginePrecisionError",
    "EngineResult",
    "build_engine",
    "fp16_layer_share",
    "onnx_input",
    "tensorrt_available",
    "write_build_script",
]
