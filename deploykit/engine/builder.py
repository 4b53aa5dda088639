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
* Where the engine runs: the sidecar records the TensorRT version, the GPU (compute capability), the L4T
  release on a Jetson, and whether the engine is version-compatible (``BuilderFlag.VERSION_COMPATIBLE``,
  asked with ``version_compatible``: the plan embeds TensorRT's lean runtime, so it runs on later
  TensorRT versions; ``EXCLUDE_LEAN_RUNTIME`` is not set, which would make the runtime load a lean
  runtime library itself) or hardware-compatible (``hardware_compatibility_level =
  HardwareCompatibilityLevel.AMPERE_PLUS``: any Ampere-or-newer GPU; refused on a Jetson and on a pre-Ampere
  GPU, :mod:`deploykit.engine.compat`). The only builder flag deploykit ever sets is VERSION_COMPATIBLE.

``tensorrt`` is imported lazily: importing this module never needs TensorRT or a GPU
(:mod:`deploykit.engine.device` finds both). What the built engine is made of is read back through the
engine inspector (:mod:`deploykit.engine.inspection`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploykit.core.config import BatchProfile
from deploykit.core.errors import ArtifactError, ConfigError, first_line
from deploykit.core.io import atomic_write_bytes, sha256_bytes, sha256_file
from deploykit.core.onnx_io import read_onnx_graph
from deploykit.core.record import (
    ArtifactRecord,
    EngineTarget,
    HardwareCompatibility,
    metadata_of,
    variant_of,
    write_sidecar,
)
from deploykit.engine.compat import check_hardware_compatible
from deploykit.engine.device import gpu_info, is_jetson, l4t_release, require_tensorrt, tensorrt_version
from deploykit.engine.errors import EngineError, EnginePrecisionError
from deploykit.engine.inspection import engine_information, fp16_layer_share, int8_layer_count

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
    "set_flag",
    "VERSION_COMPATIBLE",
    "hardware_compatibility_level",
    "HardwareCompatibilityLevel",
    "AMPERE_PLUS",
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
)

#: An engine built from an FP16 graph must have at least this share of FP16 layers (see fp16_layer_share)
FP16_SHARE_MIN = 0.9


@dataclass(kw_only=True)
class EngineResult:
    engine_path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    fp16_share: float
    build_seconds: float
    timing_cache: Path | None = None
    timing_cache_loaded: bool = False
    notes: list[str] = field(default_factory=list)


def creation_flags(trt) -> int:
    """``create_network`` flags that make the network strongly typed on this TensorRT.

    10.x: the ``STRONGLY_TYPED`` creation flag (weak typing is the default there). 11.x: no flag (always
    strongly typed; the flag is deprecated and ignored)."""
    if tensorrt_version(trt.__version__)[0] >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


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
    return inputs[0].name, (chw[0], chw[1], chw[2]), metadata_of(proto)


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


@dataclass(frozen=True, kw_only=True)
class _Request:
    """What one build is asked for: the ONNX file's facts (its record: what the sidecar carries) and the
    builder settings."""

    onnx_path: Path
    input_name: str
    chw: tuple[int, int, int]
    record: ArtifactRecord
    batch: BatchProfile
    workspace_mib: int
    opt_level: int
    cache_path: Path | None
    int8: bool = False  # the graph is explicitly quantized (Q/DQ)
    version_compatible: bool = False  # BuilderFlag.VERSION_COMPATIBLE
    hardware_compatible: bool = False  # HardwareCompatibilityLevel.AMPERE_PLUS

    @classmethod
    def read(
        cls,
        onnx_path: Path,
        *,
        batch: BatchProfile,
        workspace_mib: int,
        opt_level: int,
        cache_path: Path | None,
        version_compatible: bool = False,
        hardware_compatible: bool = False,
    ) -> _Request:
        """The build of ``onnx_path`` with these builder settings: the file's input, its record (checked
        here, before the build, not after) and whether it is a Q/DQ graph."""
        proto = read_onnx_graph(onnx_path)
        input_name, chw, meta = onnx_facts(onnx_path, proto)
        return cls(
            onnx_path=onnx_path,
            input_name=input_name,
            chw=chw,
            record=ArtifactRecord.from_metadata(meta, onnx_path),
            batch=batch,
            workspace_mib=workspace_mib,
            opt_level=opt_level,
            cache_path=cache_path,
            int8=variant_of(proto=proto).qdq,
            version_compatible=version_compatible,
            hardware_compatible=hardware_compatible,
        )

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.chw)


@dataclass(kw_only=True)
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
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> EngineResult:
    """Build ``out_path`` (serialized engine) + ``<out_path>.json`` (sidecar) from ``onnx_path``.

    One optimization profile (batch min/opt/max at the ONNX input's C, H, W). ``timing_cache`` is loaded
    when the file exists and written back (atomically) after the build. With ``expect_fp16`` an engine
    whose FP16 layer share is below :data:`FP16_SHARE_MIN` raises :class:`EnginePrecisionError` and is not
    written. The sidecar also carries the ONNX file's recorded preprocessing and model identity (preset,
    model args, labels, weights hash, random weights: :meth:`~deploykit.core.record.ArtifactRecord.sidecar_fields`), so ``deploykit predict``
    can run the engine alone and ``deploykit validate`` knows what to rebuild. A graph with
    QuantizeLinear/DequantizeLinear nodes is built the same way (strongly typed, never an INT8 builder flag
    or a calibrator) and recorded as ``precision: "int8"``. ``version_compatible``: it also runs on later
    TensorRT versions; ``hardware_compatible``: on any Ampere-or-newer GPU (refused on a Jetson and on a
    pre-Ampere GPU). Raises :class:`EngineUnavailableError` without TensorRT 10.3+ or a CUDA GPU.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX file not found: {onnx_path}")
    trt = require_tensorrt()
    gpu = gpu_info()[0]
    if hardware_compatible:
        _check_hardware_compatible(trt, gpu)
    request = _Request.read(
        onnx_path,
        batch=batch,
        workspace_mib=workspace_mib,
        opt_level=opt_level,
        cache_path=cache_path,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
    )
    logger = trt.Logger(trt.Logger.WARNING)
    built = _build(trt, logger, request)
    info = engine_information(trt, logger, built.data)
    layers = _check_precision(info, request, built, expect_fp16)
    target = _target(trt, request, gpu)
    sidecar = _sidecar(request, built, layers, target=target, total_layers=len(info["Layers"]))
    atomic_write_bytes(out_path, built.data)  # engine first: a sidecar never describes a missing engine
    sidecar_path = write_sidecar(out_path, sidecar)
    return EngineResult(
        engine_path=out_path,
        sidecar_path=sidecar_path,
        sidecar=sidecar,
        fp16_share=layers[0],
        build_seconds=built.seconds,
        timing_cache=cache_path,
        timing_cache_loaded=built.cache_loaded,
        notes=built.notes,
    )


def _check_hardware_compatible(trt, gpu: dict[str, Any] | None) -> None:
    """A hardware-compatible build needs TensorRT's HardwareCompatibilityLevel (TensorRT 8.6 and newer:
    every version deploykit supports has it), an Ampere-or-newer GPU, and no Jetson."""
    if not hasattr(trt, "HardwareCompatibilityLevel"):
        raise ConfigError(
            f"--hardware-compatible: TensorRT {trt.__version__} has no HardwareCompatibilityLevel "
            "(TensorRT 8.6 and newer have it)"
        )
    check_hardware_compatible(jetson=is_jetson(), gpu=gpu)


def _target(trt, request: _Request, gpu: dict[str, Any] | None) -> EngineTarget:
    """Where the built engine can run: this TensorRT and GPU (and L4T on a Jetson), and how compatible."""
    level = HardwareCompatibility.AMPERE_PLUS if request.hardware_compatible else HardwareCompatibility.NONE
    return EngineTarget(
        tensorrt=trt.__version__,
        gpu_name=(gpu or {}).get("name"),
        compute_capability=(gpu or {}).get("compute_capability"),
        memory_mib=(gpu or {}).get("memory_mib"),
        l4t=l4t_release(),
        version_compatible=request.version_compatible,
        hardware_compatibility=level,
    )


def _check_precision(
    info: dict[str, Any], request: _Request, built: _Built, expect_fp16: bool
) -> tuple[float, int, int]:
    """The engine's :func:`fp16_layer_share`, and its INT8 layers counted into ``built``. With
    ``expect_fp16`` a share below :data:`FP16_SHARE_MIN` raises :class:`EnginePrecisionError` (nothing has
    been written yet); a Q/DQ graph whose engine shows no INT8 tensor gets a note."""
    layers = fp16_layer_share(info)
    share, fp16_layers, float_layers = layers
    if expect_fp16 and share < FP16_SHARE_MIN:
        raise EnginePrecisionError(
            f"the engine came out FP32: only {fp16_layers}/{float_layers} layers ({share:.0%}) produce FP16 "
            f"(need {FP16_SHARE_MIN:.0%}); is {request.onnx_path.name} the FP16 graph? The engine was not "
            "written"
        )
    built.int8_layers = int8_layer_count(info)
    if request.int8 and not built.int8_layers:
        built.notes.append(
            "the engine inspector shows no INT8 tensor (Q/DQ fused into nodes it does not detail?)"
        )
    return layers


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
    return _Built(flags=flags, data=data, seconds=seconds, cache_loaded=cache_loaded, notes=notes)


def _builder_config(trt, builder, request: _Request):
    """Workspace, optimization level, DETAILED profiling (the inspector needs it), no TF32, one profile;
    version-compatible (the lean runtime embedded in the plan) and hardware-compatible when asked."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mib << 20)
    config.builder_optimization_level = request.opt_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.clear_flag(trt.BuilderFlag.TF32)  # FP32 layers really run FP32 (TF32 is on by default)
    if request.version_compatible:  # the only flag deploykit sets: no precision flag, ever
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if request.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
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


def _sidecar(
    request: _Request,
    built: _Built,
    layers: tuple[float, int, int],
    *,
    target: EngineTarget,
    total_layers: int,
) -> dict[str, Any]:
    """The engine's sidecar JSON: how it was built, from what, where it runs (TensorRT, GPU, L4T, version-
    and hardware-compatibility: :class:`EngineTarget`), and its precision."""
    import deploykit

    share, fp16_layers, float_layers = layers
    cache_path = request.cache_path
    return {
        "deploykit": deploykit.__version__,
        **target.sidecar_fields(),
        "strongly_typed": "creation flag STRONGLY_TYPED" if built.flags else "always (TensorRT 11)",
        "tf32": False,
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
        # the preprocessing recorded at export (`deploykit predict` runs the engine on its own) and what
        # the model is (preset, classes, resolution, names, whether its weights were random)
        **request.record.sidecar_fields(),
        "engine": {"bytes": len(built.data), "sha256": sha256_bytes(built.data)},
        "build_seconds": built.seconds,
        "notes": built.notes,
    }
