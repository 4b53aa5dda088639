"""FP16 weights outside onnxconverter-common's converter: :func:`convert_float_to_float16` takes the FLOAT
initializers' bytes out of the graph, lets the converter retype the graph (it reads no initializer value) and
converts the weights it retyped with :func:`weights_to_fp16` - the library's ``convert_np_to_float16``, bit
for bit, in one pass."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Collection

import numpy as np
import onnx

#: the smallest nonzero magnitude kept (smaller ones become it): the converter's default ``min_positive_val``
MIN_POSITIVE = 1e-7


def weights_to_fp16(
    values: np.ndarray, min_positive_val: float = MIN_POSITIVE, max_finite_val: float = 1e4
) -> np.ndarray:
    """onnxconverter-common's ``convert_np_to_float16``, bit for bit, in one pass: nonzero magnitudes below
    ``min_positive_val`` become ``min_positive_val``, finite magnitudes above ``max_finite_val`` become
    ``max_finite_val`` (sign kept; 0, -0, inf and NaN unchanged), then FP16. The library's version also
    computes its warnings' statistics, with four boolean-indexed copies and four ``np.where`` passes per
    tensor."""
    magnitude = np.abs(values)
    tiny = (magnitude < min_positive_val) & (magnitude > 0)
    huge = (magnitude > max_finite_val) & np.isfinite(magnitude)
    if tiny.any() or huge.any():
        values = values.copy()
        values[tiny] = np.copysign(min_positive_val, values[tiny])
        values[huge] = np.copysign(max_finite_val, values[huge])
    return values.astype(np.float16)


def take_weights(proto: onnx.ModelProto) -> dict[str, bytes]:
    """Take the bytes out of every FLOAT initializer of ``proto`` stored as ``raw_data`` under a unique name
    (name, dims and type stay): the converter then only retypes the ones it converts. Others (``float_data``,
    external data, a repeated name) keep their values and are converted by the library itself."""
    names = Counter(t.name for t in proto.graph.initializer)
    taken: dict[str, bytes] = {}
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.raw_data and names[tensor.name] == 1:
            taken[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    return taken


def put_weights(proto: onnx.ModelProto, taken: dict[str, bytes], max_finite_val: float) -> None:
    """Refill the initializers :func:`take_weights` emptied: :func:`weights_to_fp16` of the values where the
    converter made the tensor FLOAT16, the original bytes where it stayed FLOAT."""
    for tensor in proto.graph.initializer:
        raw = taken.get(tensor.name)
        if raw is None:
            continue
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            values = np.frombuffer(raw, dtype=np.float32)
            raw = weights_to_fp16(values, MIN_POSITIVE, max_finite_val).tobytes()
        tensor.raw_data = raw


def convert_float_to_float16(
    proto: onnx.ModelProto,
    *,
    op_block_list: Collection[str],
    block_nodes: Collection[str],
    max_finite_val: float,
    fp16_io: bool = False,
) -> onnx.ModelProto:
    """A copy of ``proto`` in FP16 but for the op types ``op_block_list`` and the nodes ``block_nodes``:
    onnxconverter-common's ``convert_float_to_float16``, run with the FLOAT initializers emptied (it retypes
    them and reads no value; :func:`take_weights`), the weights converted after it by
    :func:`weights_to_fp16` (:func:`put_weights`) - the library's own clipping and rounding bit for bit.
    FP32 graph I/O unless ``fp16_io``."""
    from onnxconverter_common import float16

    from deploykit.core.scopes import types_declared

    src = onnx.ModelProto()
    src.CopyFrom(proto)
    taken = take_weights(src)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = float16.convert_float_to_float16(
            src,
            min_positive_val=MIN_POSITIVE,
            keep_io_types=not fp16_io,
            op_block_list=list(op_block_list),
            node_block_list=sorted(block_nodes),
            max_finite_val=max_finite_val,
            disable_shape_infer=types_declared(src),  # its inference would add nothing then
        )
    put_weights(out, taken, max_finite_val)
    return out
