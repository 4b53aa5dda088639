"""Stage: ONNX -> TensorRT engine, written against the documented Python API of TensorRT 10.3+ and 11.x.

Both versions build the network **strongly typed**: the precision of every layer is the type of its
tensors in the ONNX graph, so an FP16 engine comes from an FP16 ONNX graph (:mod:`deploykit.transforms.fp16`)
and this stage only checks, through the engine inspector, that the engine really came out FP16.

* TensorRT 11 is always strongly typed ("Migrating Python Code from TensorRT 10.x to 11.x": no
  ``BuilderFlag.FP16``; ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is deprecated and ignored).
* TensorRT 10.x (10.3 is JetPack 6 / Jetson Orin) still has weak typing and builds strongly typed only
  when the network is created with ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``; without it,
  TensorRT 10 would be free to pick layer precisions and ignore the FP32 islands.
* Both enable TF32 for FP32 layers by default (``BuilderFlag.TF32``, "Enabled by default"). deploykit
  clears it: FP32 layers of an FP32 engine, and the FP32 islands of an FP16 one, are FP32 because the
  numbers need it, and the FP32 parity gate must check FP32, not TF32.
* INT8 is explicit: an INT8 graph (``model.int8.onnx``) carries QuantizeLinear/DequantizeLinear pairs with
  constant scales, and the same strongly typed build makes their layers int8. No ``BuilderFlag.INT8``
  and no calibrator (implicit quantization, deprecated in 10.x and removed in 11); the sidecar records
  ``precision: "int8"``.

``tensorrt`` is imported lazily: importing this module never needs TensorRT or a GPU. The GPU is found
with NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``), or with torch where cuda-python is missing.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.config import BatchProfile
from deploykit.core.errors import ArtifactError, DeployKitError, EngineUnavailableError, first_line
from deploykit.core.io import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file
from deploykit.core.onnx_io import onnx_precision, read_onnx_graph
from deploykit.core.schema import read_metadata

if TYPE_CHECKING:
    import onnx

#: Every TensorRT name this module uses (classes, enum members, methods, properties).
#: tests/test_engine_api.py checks each against the identifiers of the TensorRT 10.3 and 11.4 bindings and
#: that the code uses no other.
TRT_API_USED = (
    "__version__",
    "Logger",
    "WARNING",
    "Builder",
    "create_network",
    "OnnxParser",
    "parse_from_file",
    "num_errors",
    "get_error",
    "node_name",
    "desc",
    "create_builder_config",
    "set_memory_pool_limit",
    "MemoryPoolType",
    "WORKSPACE",
    "builder_optimization_level",
    "NetworkDefinitionCreationFlag",
    "STRONGLY_TYPED",
    "clear_flag",
    "BuilderFlag",
    "TF32",
    "profiling_verbosity",
    "ProfilingVerbosity",
    "DETAILED",
    "create_optimization_profile",
    "set_shape",
    "add_optimization_profile",
    "create_timing_cache",
    "set_timing_cache",
    "get_timing_cache",
    "serialize",
    "build_serialized_network",
    "Runtime",
    "deserialize_cuda_engine",
    "create_engine_inspector",
    "get_engine_information",
    "LayerInformationFormat",
    "JSON",
)

#: An engine built from an FP16 graph must have at least this share of FP16 layers (see fp16_layer_share)
FP16_SHARE_MIN = 0.9
#: the oldest TensorRT the engine stage supports: 10.3, the TensorRT of JetPack 6 (Jetson Orin)
MIN_TENSORRT = (10, 3)


class EngineError(DeployKitError):
    """The engine stage failed: the ONNX parser or the builder rejected the model."""

    exit_code = 2


class EnginePrecisionError(EngineError):
    """An engine was built but is not the precision that was asked for (an FP16 graph came out FP32)."""

    exit_code = 1


@dataclass
class EngineResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    fp16_share: float
    build_seconds: float
    timing_cache: Path | None = None
    timing_cache_loaded: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ availability
def tensorrt_version(version: str) -> tuple[int, int]:
    """``"10.3.0.26"`` -> ``(10, 3)``; ``(0, 0)`` when the string is not a version."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def creation_flags(trt) -> int:
    """``create_network`` flags that make the network strongly typed on this TensorRT.

    10.x: the ``STRONGLY_TYPED`` creation flag (weak typing is the default there). 11.x: no flag (always
    strongly typed; the flag is deprecated and ignored)."""
    if tensorrt_version(trt.__version__)[0] >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def gpu_info() -> tuple[dict[str, Any] | None, str]:
    """``({"name", "compute_capability", "memory_mib"}, "")`` for GPU 0, or ``(None, <one-line reason>)``.

    Asks the CUDA runtime through cuda-python (what a torch-free device image has); falls back to torch."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or not count:
            detail = cudart.cudaGetErrorString(err)[1].decode() if err else "0 devices"
            return None, f"no CUDA GPU is visible (cudaGetDeviceCount: {detail})"
        err, props = cudart.cudaGetDeviceProperties(0)
        if err != cudart.cudaError_t.cudaSuccess:
            return None, f"cannot read the GPU's properties (cudaGetDeviceProperties: {err})"
        name = (
            props.name.decode(errors="replace").rstrip("\x00")
            if isinstance(props.name, bytes)
            else props.name
        )
        return {
            "name": str(name),
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_mib": int(props.totalGlobalMem) >> 20,
        }, ""
    try:
        import torch
    except ImportError:
        return None, "neither cuda-python nor torch is installed to find the GPU (pip install cuda-python)"
    if not torch.cuda.is_available():
        return None, "no CUDA GPU is visible (torch.cuda.is_available())"
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mib": props.total_memory >> 20,
    }, ""


def tensorrt_available() -> tuple[bool, str]:
    """``(True, "TensorRT 10.3.0 on <GPU>")`` or ``(False, <one-line reason>)``; never raises."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when the TensorRT libraries are missing
        detail = first_line(exc)
        return False, f"TensorRT is not importable ({type(exc).__name__}: {detail})"
    version = str(getattr(trt, "__version__", "unknown"))
    if tensorrt_version(version) < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        return False, f"TensorRT {version} is installed; the engine stage needs TensorRT {need} or newer"
    try:
        gpu, reason = gpu_info()
    except Exception as exc:  # a broken CUDA install must not crash an export that can skip the stage
        gpu, reason = None, f"the CUDA runtime failed ({type(exc).__name__}: {first_line(exc)})"
    if gpu is None:
        return False, f"TensorRT {version} is installed but {reason}"
    return True, f"TensorRT {version} on {gpu['name']}"


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`EngineUnavailableError` (exit code 3) with a one-line reason."""
    ok, reason = tensorrt_available()
    if not ok:
        raise EngineUnavailableError(reason)
    import tensorrt as trt

    return trt


# --------------------------------------------------------------------------------------------- inspect
_FLOAT_NAMES = {
    "half": "fp16",
    "fp16": "fp16",
    "float16": "fp16",
    "float": "fp32",
    "fp32": "fp32",
    "float32": "fp32",
    "bfloat16": "bf16",
    "bf16": "bf16",
}
_FORMAT_DTYPE = re.compile(r"\b(FP16|FP32|BF16|Half|Float|Int8|Int32|Int64|Bool|FP8|UInt8)\b", re.IGNORECASE)


def _tensor_dtype(tensor: dict[str, Any]) -> str | None:
    """``fp16``/``fp32``/``bf16`` for a floating tensor, ``other`` for int/bool, ``None`` if unknown.

    TensorRT 11 reports the type in its own ``DataType`` field (e.g. ``"Half"``) and the layout in
    ``Format`` ("IEngineInspector JSON Output" migration page: the 10.x ``Format/Datatype`` field was split).
    Older engines only have ``Format/Datatype`` (e.g. ``"Row major linear FP16 format"``): read the type
    token from that string.
    """
    if isinstance(tensor.get("DataType"), str):
        name = tensor["DataType"].strip().lower()
        return _FLOAT_NAMES.get(name, "other")
    for key in ("Format/Datatype", "Format"):
        if isinstance(tensor.get(key), str):
            m = _FORMAT_DTYPE.search(tensor[key])
            if m:
                return _FLOAT_NAMES.get(m.group(1).lower(), "other")
    return None


def int8_layer_count(info: dict[str, Any]) -> int:
    """Layers of the inspector JSON with an INT8 input or output tensor (a quantize layer, or a convolution
    or MatMul fused with its Q/DQ). Layers TensorRT compiles into one Myelin node show only that node's
    outer tensors, so 0 does not prove the engine has no int8 kernels."""

    def int8(t: Any) -> bool:
        texts = [t.get(k) for k in ("DataType", "Format/Datatype", "Format")] if isinstance(t, dict) else []
        return any(isinstance(x, str) and re.search(r"\bint8\b", x, re.IGNORECASE) for x in texts)

    layers = [la for la in info.get("Layers", []) or [] if isinstance(la, dict)]
    return sum(any(map(int8, [*(la.get("Inputs") or []), *(la.get("Outputs") or [])])) for la in layers)


def fp16_layer_share(info: dict[str, Any]) -> tuple[float, int, int]:
    """``(share, fp16_layers, float_layers)`` from ``get_engine_information(LayerInformationFormat.JSON)``.

    Parsing (TensorRT 11 layout, built with ``ProfilingVerbosity.DETAILED``): ``info["Layers"]`` is a list
    of layer objects, each with ``"Outputs"``: a list of tensors carrying ``DataType``/``Format`` (see
    :func:`_tensor_dtype`). A layer counts when at least one output is floating point; it is FP16 when all
    its floating outputs are FP16. Layers that only produce network outputs are left out: the exported FP16
    graph keeps FP32 I/O on purpose (``keep_io_types``), so the final cast to FP32 is not a precision
    fallback. The I/O tensors are ``info["I/O Tensors"]`` (11.x) or ``info["Bindings"]`` (10.x). Layers
    are TensorRT's (after fusion), not ONNX nodes.
    """
    layers = info.get("Layers")
    if not isinstance(layers, list):
        raise EngineError("engine inspector JSON has no 'Layers' list")
    if any(isinstance(layer, str) for layer in layers):
        raise EngineError(
            "engine inspector returned layer names only: build with ProfilingVerbosity.DETAILED to see types"
        )
    io_names: set[str] = set()
    for tensor in info.get("I/O Tensors", []) or []:
        if isinstance(tensor, dict) and str(tensor.get("IOMode", "")).lower() == "output":
            io_names.add(str(tensor.get("Name")))
    for name in info.get("Bindings", []) or []:  # 10.x: names only (inputs and outputs)
        io_names.add(str(name))
    fp16 = counted = 0
    for layer in layers:
        outputs = [t for t in layer.get("Outputs", []) or [] if isinstance(t, dict)]
        if outputs and all(str(t.get("Name")) in io_names for t in outputs):
            continue
        kinds = [_tensor_dtype(t) for t in outputs]
        floats = [k for k in kinds if k in ("fp16", "fp32", "bf16")]
        if not floats:
            continue
        counted += 1
        fp16 += all(k == "fp16" for k in floats)
    return (fp16 / counted if counted else 0.0), fp16, counted


# ----------------------------------------------------------------------------------------------- build
def onnx_facts(
    onnx_path: Path, proto: onnx.ModelProto | None = None
) -> tuple[str, tuple[int, int, int], dict]:
    """The graph's (one) real input name, its static C, H, W, and the file's ``metadata_props``; ``proto``:
    the file's graph when the caller has already read it. TensorRT's ONNX parser checks the graph when it
    builds, so only its input and metadata are read here (:func:`~deploykit.core.onnx_io.read_onnx_graph`)."""
    proto = read_onnx_graph(onnx_path) if proto is None else proto
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise EngineError(f"{onnx_path}: expected one image input, found {[v.name for v in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    chw = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    if len(chw) != 3 or any(not d for d in chw):
        raise EngineError(
            f"{onnx_path}: input {inputs[0].name!r} must be (batch, C, H, W) with static C, H, W"
        )
    meta = {p.key: p.value for p in proto.metadata_props}
    return inputs[0].name, (chw[0], chw[1], chw[2]), meta


def onnx_input(onnx_path: Path, proto: onnx.ModelProto | None = None) -> tuple[str, tuple[int, int, int]]:
    """The graph's (one) real input name and its static C, H, W."""
    return onnx_facts(onnx_path, proto)[:2]


def _parser_errors(parser) -> str:
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = error.node_name() or "<graph>"
        lines.append(f"node {node}: {first_line(error.desc())}")
    return "; ".join(lines) or "no parser error recorded"


@dataclass(frozen=True)
class _Request:
    """What one build is asked for: the ONNX file's facts and the builder settings."""

    onnx_path: Path
    input_name: str
    chw: tuple[int, int, int]
    meta: dict[str, str]
    batch: BatchProfile
    workspace_mib: int
    opt_level: int
    cache_path: Path | None
    int8: bool = False  # the graph is explicitly quantized (Q/DQ)

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.chw)


@dataclass
class _Built:
    """What the builder produced, before the precision check and before anything is written."""

    flags: int
    data: bytes
    seconds: float
    cache_loaded: bool
    notes: list[str]
    int8_layers: int = 0  # layers with an INT8 tensor (engine inspector)


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    batch: BatchProfile,
    workspace_mib: int = 4096,
    opt_level: int = 3,
    timing_cache: str | Path | None = None,
    expect_fp16: bool = False,
) -> EngineResult:
    """Build ``out_path`` (serialized engine) + ``<out_path>.json`` (sidecar) from ``onnx_path``.

    One optimization profile (batch min/opt/max at the ONNX input's C, H, W). ``timing_cache`` is loaded
    when the file exists and written back (atomically) after the build. With ``expect_fp16`` an engine
    whose FP16 layer share is below :data:`FP16_SHARE_MIN` raises :class:`EnginePrecisionError` and is not
    written. The sidecar also carries the ONNX file's recorded preprocessing and model identity (preset,
    model args, labels, weights hash, random weights: :func:`model_identity`), so ``deploykit predict``
    can run the engine alone and ``deploykit validate`` knows what to rebuild. A graph with
    QuantizeLinear/DequantizeLinear nodes is built the same way (strongly typed, never an INT8 builder flag
    or a calibrator) and recorded as ``precision: "int8"``. Raises :class:`EngineUnavailableError` without
    TensorRT 10.3+ or a CUDA GPU.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX file not found: {onnx_path}")
    trt = require_tensorrt()
    proto = read_onnx_graph(onnx_path)
    input_name, chw, meta = onnx_facts(onnx_path, proto)
    read_metadata(meta, onnx_path)  # what the sidecar will carry is checked before the build, not after
    int8 = onnx_precision(proto) == "int8"
    request = _Request(onnx_path, input_name, chw, meta, batch, workspace_mib, opt_level, cache_path, int8)
    logger = trt.Logger(trt.Logger.WARNING)
    built = _build(trt, logger, request)
    info = _engine_information(trt, logger, built.data)
    layers = fp16_layer_share(info)
    share, fp16_layers, float_layers = layers
    if expect_fp16 and share < FP16_SHARE_MIN:
        raise EnginePrecisionError(
            f"the engine came out FP32: only {fp16_layers}/{float_layers} layers ({share:.0%}) produce FP16 "
            f"(need {FP16_SHARE_MIN:.0%}); is {onnx_path.name} the FP16 graph? The engine was not written"
        )
    built.int8_layers = int8_layer_count(info)
    if int8 and not built.int8_layers:
        built.notes.append(
            "the engine inspector shows no INT8 tensor (Q/DQ fused into nodes it does not detail?)"
        )
    sidecar = _sidecar(trt, request, built, layers, total_layers=len(info["Layers"]))
    sidecar_path = sidecar_path_for(out_path)
    atomic_write_bytes(out_path, built.data)  # engine first: a sidecar never describes a missing engine
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2) + "\n")
    return EngineResult(
        out_path, sidecar_path, sidecar, share, built.seconds, cache_path, built.cache_loaded, built.notes
    )


def _build(trt, logger, request: _Request) -> _Built:
    """Parse the ONNX file into a strongly typed network and build the serialized engine; the timing
    cache (if any) is loaded before and written back after the build."""
    builder = trt.Builder(logger)
    flags = creation_flags(trt)  # strongly typed on 10.x and 11.x alike
    network = builder.create_network(flags)
    # the parser owns the network's weights: it stays referenced here until the build is done
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.onnx_path)):
        raise EngineError(
            f"TensorRT's ONNX parser rejected {request.onnx_path.name}: {_parser_errors(parser)}"
        )
    config = _builder_config(trt, builder, request)
    notes: list[str] = []
    cache_loaded = _use_timing_cache(config, request.cache_path, notes)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = round(time.perf_counter() - t0, 3)
    if serialized is None:
        raise EngineError(
            f"TensorRT could not build an engine from {request.onnx_path.name} (see TensorRT's log above)"
        )
    data = bytes(memoryview(serialized))
    if request.cache_path is not None:
        cache = config.get_timing_cache()  # now holds this build's timings too
        atomic_write_bytes(request.cache_path, bytes(memoryview(cache.serialize())))
    return _Built(flags, data, seconds, cache_loaded, notes)


def _builder_config(trt, builder, request: _Request):
    """Workspace, optimization level, DETAILED profiling (the inspector needs it), no TF32, one profile."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mib << 20)
    config.builder_optimization_level = request.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers really run FP32 (TF32 is on by default)
    profile = builder.create_optimization_profile()
    low, opt, high = request.batch.min, request.batch.opt, request.batch.max
    profile.set_shape(request.input_name, request.shape(low), request.shape(opt), request.shape(high))
    config.add_optimization_profile(profile)
    return config


def _use_timing_cache(config, cache_path: Path | None, notes: list[str]) -> bool:
    """Give the builder the timing cache of ``cache_path`` (an empty one when the file is missing or was
    made on another device/version, with a note); True when the file's timings were loaded."""
    if cache_path is None:
        return False
    blob = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):
        notes.append(f"timing cache {cache_path.name} was made on another device/version; started empty")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        return False
    return bool(blob)


def _engine_information(trt, logger, data: bytes) -> dict[str, Any]:
    """The engine inspector's JSON of the serialized engine ``data`` (which must deserialize here)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineError("TensorRT built an engine it cannot deserialize (see TensorRT's log above)")
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def _sidecar(
    trt, request: _Request, built: _Built, layers: tuple[float, int, int], *, total_layers: int
) -> dict[str, Any]:
    """The engine's sidecar JSON: how it was built, from what, on which GPU, and its precision."""
    import deploykit

    share, fp16_layers, float_layers = layers
    cache_path, meta = request.cache_path, request.meta
    return {
        "deploykit": deploykit.__version__,
        "tensorrt": trt.__version__,
        "strongly_typed": "creation flag STRONGLY_TYPED" if built.flags else "always (TensorRT 11)",
        "tf32": False,
        "gpu": gpu_info()[0],
        # int8: the graph's Q/DQ pairs (strong typing makes them int8 layers); else the FP16 layer share
        "precision": "int8" if request.int8 else "fp16" if share >= FP16_SHARE_MIN else "fp32",
        "fp16_layer_share": round(share, 4),
        "layers": {
            "fp16": fp16_layers,
            "int8": built.int8_layers,
            "floating": float_layers,
            "total": total_layers,
        },
        "profile": {
            "input": request.input_name,
            "min": list(request.shape(request.batch.min)),
            "opt": list(request.shape(request.batch.opt)),
            "max": list(request.shape(request.batch.max)),
        },
        "workspace_mib": request.workspace_mib,
        "builder_optimization_level": request.opt_level,
        "timing_cache": {"file": cache_path.name, "loaded": built.cache_loaded} if cache_path else None,
        "source_onnx": {"file": request.onnx_path.name, "sha256": sha256_file(request.onnx_path)},
        # the preset's data_config recorded at export: `deploykit predict` runs the engine on its own
        "preprocessing": read_metadata(meta, request.onnx_path).get("deploykit.preprocessing"),
        # what the model is (preset, classes, resolution, names, whether its weights were random)
        **model_identity(meta, request.onnx_path),
        "engine": {"bytes": len(built.data), "sha256": sha256_bytes(built.data)},
        "build_seconds": built.seconds,
        "notes": built.notes,
    }


def model_identity(meta: dict[str, str], where: str | Path = "ONNX metadata") -> dict[str, Any]:
    """What an exported ONNX file's metadata says about its model, for the engine's sidecar: ``preset``,
    ``model_args`` ({"num_classes", "image_size"}), ``labels`` (class names or None),
    ``weights_state_sha256`` and ``random_weights`` (None when the file does not say: an export that
    records its model args records the weights' hash whenever it had weights). The metadata is checked
    (:func:`deploykit.core.schema.read_metadata`): a value of the wrong kind is one ArtifactError line."""
    record = read_metadata(meta, where)
    args = record.get("deploykit.model_args")
    sha = record.get("deploykit.weights_state_sha256")
    return {
        "preset": record.get("deploykit.preset"),
        "model_args": args,
        "labels": record.get("deploykit.labels"),
        "weights_state_sha256": sha,
        "random_weights": sha is None if isinstance(args, dict) else None,
        "reference_sha256": record.get("deploykit.reference_sha256"),
    }


def sidecar_path_for(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")
