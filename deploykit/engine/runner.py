"""TensorRT runner (TensorRT 11 name-based I/O API): ``run(x) -> logits`` like the other runners.

Buffers are torch CUDA tensors, so no pycuda/cuda-python dependency: per call the input shape is set on
the execution context, the output is allocated at the shape TensorRT infers, both addresses are bound with
``set_tensor_address`` and ``execute_async_v3`` runs on a torch CUDA stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploykit.engine.builder import EngineError, require_tensorrt, sidecar_path_for
from deploykit.errors import ArtifactError

#: Every TensorRT name this module uses; checked by tests/test_engine.py against the TensorRT 11 bindings.
TRT_API_USED = (
    "__version__",
    "Logger",
    "WARNING",
    "Runtime",
    "deserialize_cuda_engine",
    "create_execution_context",
    "num_io_tensors",
    "get_tensor_name",
    "get_tensor_mode",
    "get_tensor_dtype",
    "get_tensor_shape",
    "TensorIOMode",
    "INPUT",
    "OUTPUT",
    "DataType",
    "FLOAT",
    "HALF",
    "BF16",
    "set_input_shape",
    "set_tensor_address",
    "execute_async_v3",
)


def engine_precision(engine_path: str | Path) -> str:
    """``precision`` from the engine's sidecar JSON (written by build_engine), else ``fp32``."""
    sidecar = sidecar_path_for(engine_path)
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("precision", "fp32")
    except (OSError, ValueError, AttributeError):
        return "fp32"
    return value if value in ("fp16", "fp32") else "fp32"


class TensorRTRunner:
    def __init__(self, engine_path: str | Path, name: str = "tensorrt") -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise ArtifactError(f"engine not found: {path}")
        trt = require_tensorrt()
        import torch

        self.precision = engine_precision(path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(
                f"{path}: TensorRT {trt.__version__} cannot load this engine (built with another TensorRT "
                "version or for another GPU? rebuild it on this machine)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{path}: expected one input and one output, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        torch_dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
        }
        dtypes = {n: self.engine.get_tensor_dtype(n) for n in (self.input_name, self.output_name)}
        unsupported = {n: str(d) for n, d in dtypes.items() if d not in torch_dtypes}
        if unsupported:
            raise ArtifactError(f"{path}: unsupported I/O tensor types {unsupported}")
        self._input_dtype = torch_dtypes[dtypes[self.input_name]]
        self._output_dtype = torch_dtypes[dtypes[self.output_name]]
        self._stream = torch.cuda.Stream()
        self.name = f"{name}[{trt.__version__}]"

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        host = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.cuda.stream(self._stream):
            inp = host.to("cuda", dtype=self._input_dtype).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise ArtifactError(
                    f"input shape {tuple(inp.shape)} is outside the engine's optimization profile"
                )
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)),
                dtype=self._output_dtype,
                device="cuda",
            )
            self.context.set_tensor_address(self.input_name, inp.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            ok = self.context.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        if not ok:
            raise EngineError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
        return out.float().cpu().numpy()
