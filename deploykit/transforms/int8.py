"""INT8: two graphs from one export, because TensorRT and ONNX Runtime's CPU kernels want different ones.

``model.int8.onnx`` (:func:`make_qdq`) is explicit quantization for TensorRT, placed the way NVIDIA's Model
Optimizer places it for vision transformers: a QuantizeLinear/DequantizeLinear pair (int8, zero point 0,
per-tensor scale from calibration) on the activation input and an int8 weight with a per-channel
DequantizeLinear (axis = output channel) on every *linear* MatMul, Gemm and Conv - the ones whose weight is
a constant. Everything else keeps the FP16 graph's precision (FP16 with its FP32 islands): LayerNorm,
Softmax, GELU, the residual adds and the attention's two activation x activation products (Q.K^T and
attention.V, which have no constant input and so are never selected). Bias stays in float. Scales have the
dtype of the tensor they quantize (FP16 outside the islands: opset 19), so TensorRT builds the graph
strongly typed; it needs no calibrator and no INT8 flag.

The activation ranges come from ONNX Runtime's calibrators (entropy, max or percentile) run on the FP32
graph, whose nodes carry the same names as the FP16 graph's.

``model.int8.cpu.onnx`` (:func:`make_cpu_int8`) is ONNX Runtime's dynamic quantization of the FP32 graph's
MatMul/Gemm weights - what its CPU kernels run fastest (their Q/DQ kernels are slower than FP32; there is no
ConvInteger-free fast Conv path, so Conv stays FP32).

Both take ``exclude``: node names kept in higher precision (:mod:`deploykit.transforms.int8_gated` keeps
whole transformer blocks, worst first, until the gate passes; :func:`node_blocks` says which block each
quantizable node belongs to).
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploykit.core.config import CalibMethod
from deploykit.core.errors import ExportError, first_line
from deploykit.core.onnx_io import node_attribute, serialize
from deploykit.core.scopes import node_scopes

#: the op types that get Q/DQ (when their weight is a constant)
QUANTIZABLE = ("MatMul", "Gemm", "Conv")
#: the opset QuantizeLinear/DequantizeLinear take FP16 scales from
QDQ_OPSET = 19
#: symmetric int8 range (narrow: -127..127, so +-amax are exact; TensorRT's int8 is symmetric)
QMAX = 127.0
#: the smallest scale written (FP16's smallest normal number; a constant-zero channel would divide by zero)
MIN_SCALE = 2.0**-14
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|stages?\d*\.blocks)\.\d+$")


@dataclass(frozen=True, kw_only=True)
class Target:
    """A quantizable node: its activation input, its constant weight and the weight's channel axis."""

    node: str
    op: str
    activation: str
    weight: str
    axis: int


def quantizable(proto: onnx.ModelProto) -> list[Target]:
    """The linear layers of ``proto``: MatMul/Gemm/Conv whose weight input is an initializer and whose
    data input is not (activation x activation products are not linear layers and stay unquantized)."""
    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for node in proto.graph.node:
        if node.op_type not in QUANTIZABLE or len(node.input) < 2:
            continue
        data, weight = node.input[0], node.input[1]
        if data in inits or weight not in inits:
            continue
        init = inits[weight]
        if init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        rank = len(init.dims)
        if node.op_type == "Conv" and rank >= 3:
            axis = 0
        elif node.op_type == "Gemm" and rank == 2:
            axis = 0 if node_attribute(node, "transB", 0) else 1
        elif node.op_type == "MatMul" and rank == 2:
            axis = 1
        else:
            continue
        found.append(Target(node=node.name, op=node.op_type, activation=data, weight=weight, axis=axis))
    return found


# ---------------------------------------------------------------------------------------------- blocks
def node_blocks(proto: onnx.ModelProto) -> dict[str, str]:
    """The transformer block (``encoder.blocks.3``, ``stage2.blocks.0``) or, outside the blocks, the
    top-level module (``patch_embed``, ``head``) of every quantizable node. A node the simplifier rebuilt
    without scopes takes the block of the nearest producer upstream that has one."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    nodes = {n.name: n for n in proto.graph.node}
    cache: dict[str, str] = {}

    def block_of(node: onnx.NodeProto, depth: int = 0) -> str:
        if node.name in cache:
            return cache[node.name]
        scopes = node_scopes(node)
        found = next((s for s in reversed(scopes) if _BLOCK.search(s)), None) or (
            scopes[0] if scopes else None
        )
        if found is None and depth < 64:
            for name in node.input:
                if name in producer:
                    found = block_of(producer[name], depth + 1)
                    if found != "(graph)":
                        break
        cache[node.name] = found or "(graph)"
        return cache[node.name]

    return {t.node: block_of(nodes[t.node]) for t in quantizable(proto)}


def group_by_block(blocks: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for node, block in blocks.items():
        grouped[block].append(node)
    return dict(grouped)


# ----------------------------------------------------------------------------------------- calibration
class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a float32 NCHW array, ``batch`` at a time."""

    def __init__(self, name: str, images: np.ndarray, batch: int) -> None:
        self._batches = iter([{name: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._batches, None)


def _calibrator(method: CalibMethod, model_path: Path, augmented: Path):
    """ONNX Runtime's calibrator for ``method`` (symmetric ranges), before it augments the graph."""
    from onnxruntime.quantization import calibrate as ort_calibrate

    common = {"op_types_to_calibrate": list(QUANTIZABLE), "augmented_model_path": str(augmented)}
    if method is CalibMethod.MAX:
        return ort_calibrate.MinMaxCalibrater(str(model_path), symmetric=True, **common)
    if method is CalibMethod.ENTROPY:
        # 512 bins (ORT's default is 128; TensorRT's entropy calibrator uses 2048, which is much slower for
        # no measured accuracy difference on the reference models: docs/measured.md), 128 quantized bins
        # (int8's half range)
        return ort_calibrate.EntropyCalibrater(
            str(model_path), symmetric=True, num_bins=ENTROPY_BINS, num_quantized_bins=128, **common
        )
    return ort_calibrate.PercentileCalibrater(
        str(model_path), symmetric=True, num_bins=2048, percentile=PERCENTILE, **common
    )


#: --calib-method percentile's percentile of |x| (ModelOpt's and pytorch-quantization's usual 99.99-99.999)
PERCENTILE = 99.999
ENTROPY_BINS = 512


def calibrate(
    proto32: onnx.ModelProto,
    images: np.ndarray,
    method: CalibMethod = CalibMethod.PERCENTILE,
    *,
    batch: int = 8,
) -> dict[str, float]:
    """``amax`` (the symmetric clipping range) of the activation input of every quantizable node, by node
    name, from ONNX Runtime's calibrator ``method`` run over ``images`` on the FP32 graph."""
    method = CalibMethod.parse(method)
    targets = quantizable(proto32)
    wanted = {t.activation for t in targets}
    with tempfile.TemporaryDirectory(prefix="deploykit-calib-") as tmp:
        model_path = Path(tmp) / "model.onnx"
        model_path.write_bytes(serialize(proto32))
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
                calibrator = _calibrator(method, model_path, Path(tmp) / "augmented.onnx")
                # calibrate only the quantizable nodes' activation inputs (by default also every input
                # and output of those nodes: twice the tensors, and the entropy search is per tensor)
                calibrator.select_tensors_to_calibrate = _only(calibrator.select_tensors_to_calibrate, wanted)
                calibrator.augment_graph()
                calibrator.create_inference_session()
                name = proto32.graph.input[0].name
                calibrator.collect_data(_Reader(name, images.astype(np.float32), batch))
                ranges = calibrator.compute_data()
        except Exception as exc:  # onnxruntime's errors are many kinds; one line names the stage
            raise ExportError(f"INT8 calibration ({method}) failed: {first_line(exc)}") from exc
    amax: dict[str, float] = {}
    for t in targets:
        low, high = (float(np.asarray(v).max()) for v in ranges[t.activation].range_value)
        amax[t.node] = max(abs(low), abs(high))
    return amax


def _only(select, wanted: set[str]):
    """Wrap the calibrator's tensor selection so it calibrates only ``wanted`` tensors."""

    def selected(model):
        tensors, value_infos = select(model)
        return {t for t in tensors if t in wanted}, value_infos

    return selected


# --------------------------------------------------------------------------------------- Q/DQ insertion
def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in proto.graph.initializer:
        types[init.name] = init.data_type
    return types


def _np_dtype(elem_type: int) -> type:
    return np.float16 if elem_type == TensorProto.FLOAT16 else np.float32


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: ``(q, scale)`` with ``weight ~= q * scale`` along ``axis``."""
    w = weight.astype(np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale = np.maximum(amax / QMAX, MIN_SCALE).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def make_qdq(
    proto: onnx.ModelProto,
    amax: dict[str, float],
    *,
    exclude: Collection[str] = (),
    weight_scale: dict[str, float] | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """``proto`` (the FP16 graph) with Q/DQ on the quantizable nodes that ``amax`` covers and ``exclude``
    does not name, at opset 19; returns the graph and the quantized node names. ``weight_scale`` multiplies
    named nodes' weight scales (a fault injected by tests and the sensitivity demonstration)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    _set_opset(out, QDQ_OPSET)
    types = _elem_types(out)
    inits = {i.name: i for i in out.graph.initializer}
    targets = {t.node: t for t in quantizable(out) if t.node in amax and t.node not in exclude}
    uses: dict[str, int] = defaultdict(int)
    for node in out.graph.node:
        for name in node.input:
            uses[name] += 1
    new_inits: list[TensorProto] = []
    shared: dict[str, str] = {}  # activation tensor -> its DequantizeLinear output
    nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        target = targets.get(node.name)
        if target is None:
            nodes.append(node)
            continue
        meta = list(node.metadata_props)
        if target.activation not in shared:
            dtype = _np_dtype(types.get(target.activation, TensorProto.FLOAT))
            act_inits, act_nodes, shared[target.activation] = _activation_qdq(
                target.activation, amax[node.name], dtype, meta
            )
            new_inits += act_inits
            nodes += act_nodes
        node.input[0] = shared[target.activation]
        factor = (weight_scale or {}).get(node.name, 1.0)
        weight_inits, weight_dq = _weight_dq(node.name, target, inits[target.weight], factor, meta)
        new_inits += weight_inits
        nodes.append(weight_dq)
        uses[target.weight] -= 1
        node.input[1] = weight_dq.output[0]
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    outputs = {o.name for o in out.graph.output}
    kept = [i for i in out.graph.initializer if uses.get(i.name, 0) > 0 or i.name in outputs]
    del out.graph.initializer[:]
    out.graph.initializer.extend([*kept, *new_inits])
    return out, sorted(targets)


def _activation_qdq(
    activation: str, amax: float, dtype: type, meta: Iterable
) -> tuple[list[TensorProto], list[onnx.NodeProto], str]:
    """The Q/DQ pair of an activation tensor (int8, zero point 0, one scale from ``amax`` in ``dtype``): its
    initializers, its two nodes and the DequantizeLinear output."""
    base = f"{activation}_int8"
    scale = max(amax / QMAX, MIN_SCALE)
    inits = [
        numpy_helper.from_array(np.array(scale, dtype=dtype), f"{base}_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), f"{base}_zero_point"),
    ]
    qargs = [f"{base}_scale", f"{base}_zero_point"]
    nodes = [
        _with_meta(
            helper.make_node("QuantizeLinear", [activation, *qargs], [f"{base}_q"], name=f"{base}_quantize"),
            meta,
        ),
        _with_meta(
            helper.make_node(
                "DequantizeLinear", [f"{base}_q", *qargs], [f"{base}_dq"], name=f"{base}_dequantize"
            ),
            meta,
        ),
    ]
    return inits, nodes, f"{base}_dq"


def _weight_dq(
    name: str, target: Target, init: TensorProto, factor: float, meta: Iterable
) -> tuple[list[TensorProto], onnx.NodeProto]:
    """Node ``name``'s weight as int8 with a per-channel DequantizeLinear (scales times ``factor``, in the
    weight's dtype): the initializers and the node."""
    weight = numpy_helper.to_array(init)
    q, scale = quantize_weight(weight, target.axis)
    scale = scale * factor
    wbase = f"{name}_weight_int8"
    inits = [
        numpy_helper.from_array(q, f"{wbase}"),
        numpy_helper.from_array(scale.astype(_np_dtype(init.data_type)), f"{wbase}_scale"),
        numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{wbase}_zero_point"),
    ]
    dq = helper.make_node(
        "DequantizeLinear",
        [wbase, f"{wbase}_scale", f"{wbase}_zero_point"],
        [f"{wbase}_dq"],
        name=f"{wbase}_dequantize",
        axis=target.axis,
    )
    return inits, _with_meta(dq, meta)


def _with_meta(node: onnx.NodeProto, meta: Iterable) -> onnx.NodeProto:
    for prop in meta:
        node.metadata_props.add(key=prop.key, value=prop.value)
    return node


def _set_opset(proto: onnx.ModelProto, version: int) -> None:
    """Raise the default-domain opset to ``version`` (18 -> 19 changes no op this exporter emits in a way
    that matters: Cast gains ``saturate`` (default on), Q/DQ gain FP16 scales, Pad/Resize/Shape/... only
    gain types)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < version:
            entry.version = version


# ------------------------------------------------------------------------------------------ CPU INT8
def make_cpu_int8(proto32: onnx.ModelProto, *, exclude: Collection[str] = ()) -> onnx.ModelProto:
    """ONNX Runtime's dynamic INT8 of the FP32 graph's MatMul/Gemm weights (per-tensor int8 weights,
    activations quantized on the fly), with ``exclude``'s nodes left in FP32; metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="deploykit-int8cpu-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(serialize(proto32))
        try:
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(exclude),
                extra_options={"MatMulConstBOnly": True},
            )
        except Exception as exc:
            raise ExportError(f"ONNX Runtime dynamic quantization failed: {first_line(exc)}") from exc
        quantized = onnx.load(str(dst))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(proto32.metadata_props)
    return quantized


def qdq_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
