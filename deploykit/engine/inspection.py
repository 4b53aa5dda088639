"""What a built engine is made of, read from TensorRT's engine inspector: the share of FP16 layers (the
FP16 gate of :func:`~deploykit.engine.builder.build_engine`) and the layers with an INT8 tensor.

The inspector's JSON (``get_engine_information(LayerInformationFormat.JSON)``, which needs an engine
built with ``ProfilingVerbosity.DETAILED``) is parsed in both layouts: TensorRT 11's, whose tensors carry
their type in ``DataType``, and 10.x's, whose ``Format/Datatype`` string holds the type token. Layers are
TensorRT's (after fusion), not ONNX nodes. ``tensorrt`` is never imported here: :func:`engine_information`
is handed the module.
"""

from __future__ import annotations

import json
import re
from typing import Any

from deploykit.engine.errors import EngineError

#: Every TensorRT name this module uses (classes, enum members, methods, properties).
#: tests/test_engine_api.py checks each against the identifiers of the TensorRT 10.3 and 11.4 bindings and
#: that the code uses no other.
TRT_API_USED = (
    "Runtime",
    "deserialize_cuda_engine",
    "create_engine_inspector",
    "get_engine_information",
    "LayerInformationFormat",
    "JSON",
)

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


def engine_information(trt, logger, data: bytes) -> dict[str, Any]:
    """The engine inspector's JSON of the serialized engine ``data`` (which must deserialize here)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineError("TensorRT built an engine it cannot deserialize (see TensorRT's log above)")
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


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
