"""TensorRT runner (the name-based I/O API of TensorRT 10 and 11): ``run(x) -> logits`` like the other
runners, with no torch needed on the device.

Device memory, copies and the stream go through NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``): a
numpy batch is copied into a device buffer (grown as needed, reused across calls), the input shape is set
on the execution context, the output is written at the shape TensorRT infers, ``execute_async_v3`` runs
on the runner's stream and the result is copied back and returned as numpy float32. A torch CUDA tensor
(when torch is installed) is bound without any copy and the output comes back as a torch CUDA tensor,
run on torch's current stream.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from deploykit.core.errors import ArtifactError, EngineUnavailableError, InputError
from deploykit.core.record import EngineTarget, read_sidecar, variant_of
from deploykit.engine.compat import engine_compatibility
from deploykit.engine.device import gpu_info, is_jetson, require_tensorrt
from deploykit.engine.errors import EngineError

#: Every TensorRT name this module uses; tests/test_engine_api.py checks each against the TensorRT 10.3 and
#: 11.4 bindings.
TRT_API_USED = (
    "__version__",
    "Logger",
    "WARNING",
    "Runtime",
    "engine_host_code_allowed",
    "deserialize_cuda_engine",
    "create_execution_context",
    "num_io_tensors",
    "get_tensor_name",
    "get_tensor_mode",
    "get_tensor_dtype",
    "get_tensor_shape",
    "get_tensor_profile_shape",
    "TensorIOMode",
    "INPUT",
    "OUTPUT",
    "DataType",
    "FLOAT",
    "HALF",
    "set_input_shape",
    "set_tensor_address",
    "execute_async_v3",
)


def require_cudart():
    """``cuda.bindings.runtime``, or :class:`EngineUnavailableError` (exit 3) saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the TensorRT runner needs NVIDIA cuda-python (pip install cuda-python): {exc}"
        ) from None
    return cudart


def _check(cudart, result, what: str):
    """Unpack a cuda-python call's ``(err, *values)``; a CUDA error becomes :class:`EngineError`."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorString(err)[1]
        raise EngineError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values) or None


class _DeviceBuffer:
    """One device allocation that grows to the largest batch seen (freed by :meth:`free`)."""

    def __init__(self, cudart) -> None:
        self.cudart, self.ptr, self.nbytes = cudart, 0, 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(_check(self.cudart, self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self.nbytes = nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
        self.ptr, self.nbytes = 0, 0


def check_runs_here(path: Path, target: EngineTarget, tensorrt: str) -> None:
    """Refuse, in one line naming both sides and the rebuild command (:class:`ArtifactError`, exit 2), an
    engine whose sidecar says it cannot run with this TensorRT on this GPU (:mod:`deploykit.engine.compat`)
    — before TensorRT's deserialiser sees it. An engine that records nothing is left to TensorRT."""
    if not target.recorded:
        return
    verdict = engine_compatibility(
        target, tensorrt=tensorrt, gpu=gpu_info()[0], jetson=is_jetson(), engine=path
    )
    if not verdict.ok:
        raise ArtifactError(verdict.message)


class TensorRTRunner:
    """Run a serialized engine with one input and one output (both FLOAT or HALF)."""

    def __init__(self, engine_path: str | Path, name: str = "tensorrt") -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise ArtifactError(f"engine not found: {path}")
        variant = variant_of(path)  # a bad sidecar is bad input (exit 2) before a missing TensorRT
        target = EngineTarget.from_sidecar(read_sidecar(path))
        trt = require_tensorrt()
        cudart = require_cudart()
        check_runs_here(path, target, trt.__version__)
        self._cudart = cudart
        #: the variant the sidecar records (fp32, fp16 or int8: built from a Q/DQ graph)
        self.variant = variant
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if target.version_compatible:  # its plan embeds the lean runtime: host code TensorRT must be allowed
            self._runtime.engine_host_code_allowed = True
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
        np_dtypes = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
        dtypes = {n: self.engine.get_tensor_dtype(n) for n in (self.input_name, self.output_name)}
        unsupported = {n: str(d) for n, d in dtypes.items() if d not in np_dtypes}
        if unsupported:
            raise ArtifactError(f"{path}: unsupported I/O tensor types {unsupported} (FLOAT or HALF only)")
        self.input_dtype = np.dtype(np_dtypes[dtypes[self.input_name]])
        self.output_dtype = np.dtype(np_dtypes[dtypes[self.output_name]])
        # profile 0: (min, opt, max) shapes; the batch range a caller may send
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.input_shape = tuple(int(d) for d in high)[1:]  # (C, H, W)
        self.batch_range = (int(low[0]), int(high[0]))
        self.output_shape = tuple(int(d) for d in self.engine.get_tensor_shape(self.output_name))  # (-1, K)
        self._input = _DeviceBuffer(cudart)
        self._output = _DeviceBuffer(cudart)
        self._stream = int(_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate"))
        self.name = f"{name}[{trt.__version__}]"

    # ------------------------------------------------------------------------------------------- run
    def _set_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(shape[1:]) != self.input_shape or not self.batch_range[0] <= shape[0] <= self.batch_range[1]:
            low, high = self.batch_range
            raise InputError(
                f"input shape {tuple(shape)} does not fit the engine's profile (batch {low}..{high}, "
                f"{'x'.join(map(str, self.input_shape))})"
            )
        if not self.context.set_input_shape(self.input_name, tuple(shape)):
            raise InputError(f"TensorRT rejected the input shape {tuple(shape)}")
        return tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))

    def _execute(self, stream: int, input_ptr: int, output_ptr: int) -> None:
        self.context.set_tensor_address(self.input_name, input_ptr)
        self.context.set_tensor_address(self.output_name, output_ptr)
        if not self.context.execute_async_v3(stream):
            raise EngineError("TensorRT execute_async_v3 failed (see TensorRT's log above)")

    def run(self, x):
        """numpy ``(B, C, H, W)`` -> numpy float32 logits; a torch CUDA tensor -> a torch CUDA tensor."""
        if type(x).__module__.startswith("torch"):
            return self._run_torch(x)
        cudart = self._cudart
        host = np.ascontiguousarray(x, dtype=self.input_dtype)
        out_shape = self._set_shape(host.shape)
        result = np.empty(out_shape, dtype=self.output_dtype)
        d_in = self._input.reserve(host.nbytes)
        d_out = self._output.reserve(result.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            cudart, cudart.cudaMemcpyAsync(d_in, host.ctypes.data, host.nbytes, h2d, self._stream), "copy in"
        )
        self._execute(self._stream, d_in, d_out)
        _check(
            cudart,
            cudart.cudaMemcpyAsync(result.ctypes.data, d_out, result.nbytes, d2h, self._stream),
            "copy out",
        )
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return result.astype(np.float32, copy=False)

    def _run_torch(self, x):
        """Zero-copy: bind the tensor's device memory, write the output into a new CUDA tensor."""
        import torch

        want = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
        if not x.is_cuda:
            return torch.from_numpy(self.run(x.detach().cpu().numpy()))
        x = x.detach().to(want[self.input_dtype]).contiguous()  # no copy when it already is
        out = torch.empty(self._set_shape(tuple(x.shape)), dtype=want[self.output_dtype], device=x.device)
        stream = torch.cuda.current_stream(x.device)
        self._execute(stream.cuda_stream, x.data_ptr(), out.data_ptr())
        stream.synchronize()
        return out

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the runner is garbage-collected)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        self._input.free()
        self._output.free()
        if self._stream:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the CUDA runtime may be gone already
            self.close()

    def run_timed(self, x) -> tuple[np.ndarray, float]:
        """:meth:`run` of a numpy batch, with the GPU time of the engine alone: ``(logits, gpu_ms)``.
        Two CUDA events recorded on the runner's stream around ``execute_async_v3`` (after the copy in,
        before the copy out) give the milliseconds the GPU spent computing; the caller's own clock around
        this call is the host end-to-end time (``deploykit bench`` reports both). The events are created
        on the first call, kept, and destroyed with the runner."""
        import weakref

        cudart = self._cudart
        events = getattr(self, "_timing_events", None)
        if events is None:
            events = tuple(_check(cudart, cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(2))
            self._timing_events = events

            def destroy(cudart=cudart, events=events) -> None:
                with contextlib.suppress(Exception):
                    for event in events:
                        cudart.cudaEventDestroy(event)

            weakref.finalize(self, destroy).atexit = False
        start, end = events
        host = np.ascontiguousarray(x, dtype=self.input_dtype)
        result = np.empty(self._set_shape(host.shape), dtype=self.output_dtype)
        d_in = self._input.reserve(host.nbytes)
        d_out = self._output.reserve(result.nbytes)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        stream = self._stream
        _check(cudart, cudart.cudaMemcpyAsync(d_in, host.ctypes.data, host.nbytes, h2d, stream), "copy in")
        _check(cudart, cudart.cudaEventRecord(start, stream), "cudaEventRecord")
        self._execute(stream, d_in, d_out)
        _check(cudart, cudart.cudaEventRecord(end, stream), "cudaEventRecord")
        _check(
            cudart, cudart.cudaMemcpyAsync(result.ctypes.data, d_out, result.nbytes, d2h, stream), "copy out"
        )
        _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        gpu_ms = float(_check(cudart, cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))
        return result.astype(np.float32, copy=False), gpu_ms
