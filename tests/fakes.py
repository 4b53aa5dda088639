"""Fakes of ``tensorrt`` and ``cuda.bindings.runtime`` that record every call, for the version branches of
the engine stage on a machine without TensorRT or a GPU.

They implement only what deploykit calls, with the names of the real bindings (tests/test_engine_api.py
checks deploykit's names against the real identifier lists; these fakes do not decide that). The fake
"device memory" is host memory addressed by integers, so the runner's copies and buffer handling are
exercised for real; the fake engine computes ``logits = mean over (H, W) of the input @ W`` so results
can be checked. A fake timing cache is accepted when it is empty or was serialized by the fake builder
(``CACHE...``); any other bytes are "from another device/version".

Also the small files the engine tests share: ONNX graphs as an export writes them and engine files with
their sidecar.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------- cudart
class FakeCudart(types.ModuleType):
    class cudaError_t(enum.IntEnum):  # noqa: N801 - the binding's name
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorInsufficientDriver = 35

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(
        self, devices: int = 1, gpu: str = "Fake Orin", capability: tuple[int, int] = (8, 7)
    ) -> None:
        super().__init__("cuda.bindings.runtime")
        self.devices = devices
        self.gpu, self.capability = gpu, capability
        self.calls: list[tuple] = []
        self.buffers: dict[int, ctypes.Array] = {}
        self.streams = 0

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaGetDeviceCount(self):  # noqa: N802
        if not self.devices:
            return (self.cudaError_t.cudaErrorInsufficientDriver, None)
        return self._ok(self.devices)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        major, minor = self.capability
        props = types.SimpleNamespace(
            name=self.gpu.encode(), major=major, minor=minor, totalGlobalMem=8 << 30
        )
        return self._ok(props)

    def cudaDriverGetVersion(self):  # noqa: N802 - 0 when no driver is installed
        return self._ok(12060 if self.devices else 0)

    def cudaRuntimeGetVersion(self):  # noqa: N802
        return self._ok(12060)

    def cudaGetErrorString(self, err):  # noqa: N802
        return self._ok(f"fake error {int(err)}".encode())

    def cudaMalloc(self, nbytes):  # noqa: N802
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        self.calls.append(("cudaMalloc", nbytes))
        return self._ok(ctypes.addressof(buf))

    def cudaFree(self, ptr):  # noqa: N802
        self.calls.append(("cudaFree", ptr))
        del self.buffers[int(ptr)]
        return self._ok()

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):  # noqa: N802
        self.calls.append(("cudaMemcpyAsync", kind.name, nbytes, stream))
        ctypes.memmove(int(dst), int(src), int(nbytes))
        return self._ok()

    def cudaStreamCreate(self):  # noqa: N802
        self.streams += 1
        return self._ok(1000 + self.streams)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        self.calls.append(("cudaStreamSynchronize", stream))
        return self._ok()

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.calls.append(("cudaStreamDestroy", stream))
        return self._ok()

    # events: a fake event is a list holding the host time it was recorded at
    def cudaEventCreate(self):  # noqa: N802
        self.calls.append(("cudaEventCreate",))
        return self._ok([None])

    def cudaEventRecord(self, event, stream):  # noqa: N802
        import time

        self.calls.append(("cudaEventRecord", stream))
        event[0] = time.perf_counter()
        return self._ok()

    def cudaEventSynchronize(self, event):  # noqa: N802
        self.calls.append(("cudaEventSynchronize",))
        return self._ok()

    def cudaEventElapsedTime(self, start, end):  # noqa: N802
        self.calls.append(("cudaEventElapsedTime",))
        return self._ok((end[0] - start[0]) * 1e3)

    def cudaEventDestroy(self, event):  # noqa: N802
        self.calls.append(("cudaEventDestroy",))
        return self._ok()


def install_cudart(monkeypatch, cudart: FakeCudart) -> None:
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)


# ---------------------------------------------------------------------------------------- tensorrt
def _array_at(address: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * nbytes).from_address(address)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


#: FakeTensorRT's own attributes (not TensorRT names): left out of ``FakeTensorRT.accessed``
FAKE_INTERNALS = {
    "calls",
    "layer_dtypes",
    "classes",
    "io_dtype",
    "batch_range",
    "built",
    "accessed",
    "onnx_backed",
    "parsed",
}


class FakeTensorRT(types.ModuleType):
    """``tensorrt`` of a given version. ``calls`` records ``(name, *args)`` in order; ``accessed`` every
    public module attribute read (``trt.Builder``, ``trt.BuilderFlag``, ...)."""

    def __getattribute__(self, name):
        if not name.startswith("_") and name not in FAKE_INTERNALS:
            object.__getattribute__(self, "accessed").add(name)
        return object.__getattribute__(self, name)

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag(enum.IntEnum):
        FP16 = 0  # 10.x only (weak typing); here so that a call with it would be recorded, not crash
        INT8 = 1  # 10.x only (implicit quantization)
        TF32 = 6
        VERSION_COMPATIBLE = 13

    class HardwareCompatibilityLevel(enum.IntEnum):
        NONE = 0
        AMPERE_PLUS = 1

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class ProfilingVerbosity(enum.IntEnum):
        LAYER_NAMES_ONLY = 0
        NONE = 1
        DETAILED = 2

    class LayerInformationFormat(enum.IntEnum):
        ONELINE = 0
        JSON = 1

    class TensorIOMode(enum.IntEnum):
        NONE = 0
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1
        INT32 = 3

    class Logger:
        WARNING = 2

        def __init__(self, severity=None) -> None:
            self.severity = severity

    def __init__(
        self,
        version: str,
        layer_dtypes: list[str] | None = None,
        classes: int = 5,
        io_dtype: str = "FLOAT",
        batch_range: tuple[int, int] = (1, 8),
        onnx_backed: bool = False,
    ) -> None:
        super().__init__("tensorrt")
        self.accessed: set[str] = set()
        self.__version__ = version
        self.calls: list[tuple] = []
        self.layer_dtypes = layer_dtypes or ["Float"] * 4
        self.classes = classes
        self.io_dtype = io_dtype
        self.batch_range = batch_range
        self.built: dict[bytes, dict] = {}
        #: ``onnx_backed``: the engine a build makes runs the parsed ONNX file with ONNX Runtime
        self.onnx_backed = onnx_backed
        self.parsed: str | None = None
        trt = self

        class Builder:
            def __init__(self, logger) -> None:
                trt.calls.append(("Builder",))

            def create_network(self, flags):
                trt.calls.append(("create_network", flags))
                return types.SimpleNamespace(flags=flags)

            def create_builder_config(self):
                return FakeConfig(trt)

            def create_optimization_profile(self):
                return FakeProfile(trt)

            def build_serialized_network(self, network, config):
                trt.calls.append(("build_serialized_network", network.flags))
                blob = f"ENGINE trt={trt.__version__} flags={network.flags}".encode()
                if trt.onnx_backed:
                    blob += f" onnx={trt.parsed}".encode()
                trt.built[blob] = {"profile": config.profiles[0].shapes}
                return blob

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger) -> None:
                pass

            def parse_from_file(self, path):
                trt.calls.append(("parse_from_file", path))
                trt.parsed = str(path)
                return True

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def __setattr__(self, name, value):  # engine_host_code_allowed is recorded
                trt.calls.append(("runtime." + name, value))
                object.__setattr__(self, name, value)

            def deserialize_cuda_engine(self, data):
                trt.calls.append(("deserialize_cuda_engine", len(data)))
                blob = bytes(data)
                if b" onnx=" in blob:
                    return OnnxEngine(trt, blob.split(b" onnx=", 1)[1].decode())
                return FakeEngine(trt) if blob.startswith(b"ENGINE") else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime


class FakeConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.profiles: list[FakeProfile] = []
        self.cache = None

    def __setattr__(self, name, value):
        # every TensorRT property set is recorded (int8_calibrator would be too)
        if name not in ("trt", "profiles", "cache"):
            self.trt.calls.append(("config." + name, value))
        object.__setattr__(self, name, value)

    def set_flag(self, flag):  # recorded: deploykit turns on VERSION_COMPATIBLE only, when asked
        self.trt.calls.append(("set_flag", flag.name))

    def set_memory_pool_limit(self, pool, size):
        self.trt.calls.append(("set_memory_pool_limit", pool.name, size))

    def clear_flag(self, flag):
        self.trt.calls.append(("clear_flag", flag.name))

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, blob):
        blob = bytes(blob)
        return types.SimpleNamespace(blob=blob, serialize=lambda: b"CACHE" + blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        """False (cache not set) for a cache that this fake builder did not write, as TensorRT does for
        one from another device or version when ``ignore_mismatch`` is False."""
        self.trt.calls.append(("set_timing_cache", cache.blob, ignore_mismatch))
        if cache.blob and not cache.blob.startswith(b"CACHE") and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeProfile:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high):
        self.trt.calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeEngine:
    """One input ``input`` (B, 3, 4, 4) and one output ``logits`` (B, classes)."""

    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.num_io_tensors = 2
        self.weights = np.arange(3 * trt.classes, dtype=np.float32).reshape(3, trt.classes) / 10

    def get_tensor_name(self, i):
        return ("input", "logits")[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "input" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self.trt.DataType[self.trt.io_dtype]

    def get_tensor_shape(self, name):
        return (-1, 3, 4, 4) if name == "input" else (-1, self.trt.classes)

    def get_tensor_profile_shape(self, name, profile):
        low, high = self.trt.batch_range
        return [(low, 3, 4, 4), (low, 3, 4, 4), (high, 3, 4, 4)]

    def create_engine_inspector(self):
        layers = [
            {"Name": f"l{i}", "Outputs": [{"Name": f"t{i}", "DataType": d}]}
            for i, d in enumerate(self.trt.layer_dtypes)
        ]
        info = {"Layers": layers, "I/O Tensors": []}
        return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(info))

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape):
        self.engine.trt.calls.append(("set_input_shape", name, tuple(shape)))
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], self.engine.trt.classes)

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)

    def execute_async_v3(self, stream):
        trt = self.engine.trt
        trt.calls.append(("execute_async_v3", stream))
        dtype = np.float16 if trt.io_dtype == "HALF" else np.float32
        x = _array_at(self.addresses["input"], self.shape, dtype).astype(np.float32)
        out = _array_at(self.addresses["logits"], (self.shape[0], trt.classes), dtype)
        out[...] = (x.mean(axis=(2, 3)) @ self.engine.weights).astype(dtype)
        return True


class OnnxEngine(FakeEngine):
    """An engine that computes what its ONNX file computes (ONNX Runtime on the CPU), for the code paths
    that need a real model behind the engine (validate --dataset): input and output shapes and types are the
    graph's."""

    def __init__(self, trt: FakeTensorRT, onnx_path: str) -> None:
        import onnxruntime as ort

        super().__init__(trt)
        self.session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.input, self.output = self.session.get_inputs()[0], self.session.get_outputs()[0]

    def get_tensor_name(self, i):
        return (self.input.name, self.output.name)[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == self.input.name else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        tensor = self.input if name == self.input.name else self.output
        return self.trt.DataType.HALF if "float16" in tensor.type else self.trt.DataType.FLOAT

    def get_tensor_shape(self, name):
        tensor = self.input if name == self.input.name else self.output
        return (-1, *tensor.shape[1:])

    def get_tensor_profile_shape(self, name, profile):
        low, high = self.trt.batch_range
        chw = tuple(self.input.shape[1:])
        return [(low, *chw), (low, *chw), (high, *chw)]

    def create_execution_context(self):
        return OnnxContext(self)


class OnnxContext(FakeContext):
    def get_tensor_shape(self, name):
        engine = self.engine
        return (self.shape[0], *engine.output.shape[1:]) if name == engine.output.name else self.shape

    def execute_async_v3(self, stream):
        engine = self.engine
        engine.trt.calls.append(("execute_async_v3", stream))
        dtypes = {
            n: _numpy_type(t.type)
            for n, t in ((engine.input.name, engine.input), (engine.output.name, engine.output))
        }
        x = _array_at(self.addresses[engine.input.name], self.shape, dtypes[engine.input.name])
        y = engine.session.run(None, {engine.input.name: x.copy()})[0]
        _array_at(self.addresses[engine.output.name], y.shape, dtypes[engine.output.name])[...] = y
        return True


def _numpy_type(onnx_type: str):
    return np.float16 if "float16" in onnx_type else np.float32


def expected_logits(x: np.ndarray, classes: int = 5) -> np.ndarray:
    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    return x.astype(np.float32).mean(axis=(2, 3)) @ weights


def install_fakes(
    monkeypatch,
    version: str,
    devices: int = 1,
    gpu: str = "Fake Orin",
    capability: tuple[int, int] = (8, 7),
    **engine,
) -> tuple[FakeTensorRT, FakeCudart]:
    """Make ``import tensorrt`` and ``cuda.bindings.runtime`` the fakes (``engine``: FakeTensorRT options;
    ``gpu``, ``capability``: the GPU the fake CUDA runtime reports)."""
    trt, cudart = FakeTensorRT(version, **engine), FakeCudart(devices, gpu=gpu, capability=capability)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cudart(monkeypatch, cudart)
    return trt, cudart


# ------------------------------------------------------------------------------------- files
def tiny_onnx(path: Path) -> Path:
    """A one-node ONNX graph: input ``input`` (batch, 3, 16, 16) -> Relu -> ``logits``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"], name="relu0")],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 16, 16])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def qdq_onnx(path: Path, *, metadata: dict[str, str] | None = None) -> Path:
    """An explicitly quantized graph as the INT8 export writes it (opset 19): input ``input`` (batch, 3, 16,
    16) FP32 -> Cast FP16 -> QuantizeLinear/DequantizeLinear (int8, zero point 0, FP16 per-tensor scale)
    -> Conv whose int8 weight (4, 3, 4, 4) feeds a per-channel DequantizeLinear (axis 0), FP16 bias ->
    GlobalAveragePool -> Flatten -> Cast FP32 -> ``logits`` (batch, 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float16), "x_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 4, 4)).astype(np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float16), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zero"),
        numpy_helper.from_array(np.zeros(4, np.float16), "bias"),
    ]
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], name="to_fp16", to=TensorProto.FLOAT16),
        helper.make_node("QuantizeLinear", ["x16", "x_scale", "x_zero"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=0),
        helper.make_node(
            "Conv", ["xd", "w", "bias"], ["c"], name="conv", kernel_shape=[4, 4], strides=[4, 4]
        ),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Cast", ["f"], ["logits"], name="to_fp32", to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    if metadata:
        helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path


#: the preprocessing record :func:`exported_like_onnx` writes into the graph's metadata
PREPROCESSING = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}


def exported_like_onnx(path: Path) -> Path:
    """:func:`tiny_onnx` with deploykit's preprocessing record, as an export writes it."""
    import onnx

    proto = onnx.load(str(tiny_onnx(path)))
    onnx.helper.set_model_props(proto, {"deploykit.preprocessing": json.dumps(PREPROCESSING)})
    onnx.save(proto, str(path))
    return path


def fake_engine_file(directory: Path, version: str = "10.3.0.26", precision: str = "fp32") -> Path:
    """``model.engine`` that FakeTensorRT deserializes, with a sidecar giving its precision."""
    engine = directory / "model.engine"
    engine.write_bytes(f"ENGINE trt={version}".encode())
    (directory / "model.engine.json").write_text(json.dumps({"precision": precision}))
    return engine
