"""Stage: PyTorch module -> one self-contained ONNX file with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from deploykit.core.config import Exporter
from deploykit.core.errors import ExportError, first_line
from deploykit.core.interrupts import reraise_if_interrupted

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
#: never trace with batch 1: the dynamo exporter silently specialises a size-1 dimension to a constant
EXAMPLE_BATCH = 2


def _quiet():
    """Silence the exporters' progress prints and warnings (they go to stdout/stderr otherwise)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx"):
        logger = logging.getLogger(name)
        level = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, level)
    return stack


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    opset: int,
    exporter: str = Exporter.DYNAMO,
    max_batch: int = 64,
) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) into an ONNX model whose input ``input`` is ``(batch, C, H, W)``.

    Weights are embedded (no ``.onnx.data`` sidecar). Raises :class:`ExportError` if the exporter fails or
    the batch axis came out static.
    """
    model = model.eval()
    example = torch.randn(EXAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with _quiet(), torch.no_grad():
            if exporter == Exporter.DYNAMO:
                batch = torch.export.Dim(BATCH_DIM, min=1, max=max(max_batch, EXAMPLE_BATCH))
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},),
                    opset_version=opset,
                    external_data=False,
                    optimize=False,  # the simplify stage (onnxsim, fallback onnxslim) does the clean-up
                    verify=False,
                    report=False,
                )
                proto = program.model_proto
            elif exporter == Exporter.TORCHSCRIPT:
                buf = io.BytesIO()
                torch.onnx.export(
                    model,
                    (example,),
                    buf,
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
                    opset_version=opset,
                    do_constant_folding=True,
                )
                proto = onnx.load_from_string(buf.getvalue())
            else:
                raise ExportError(f"unknown exporter {exporter!r} (use dynamo or torchscript)")
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many unrelated types, and wrap an interrupt in one
        reraise_if_interrupted(exc)
        first = first_line(exc)
        raise ExportError(f"{exporter} exporter failed: {first}") from exc
    check_dynamic_batch(proto)
    return proto


def check_dynamic_batch(proto: onnx.ModelProto) -> None:
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].dim_param == "" or dims[0].HasField("dim_value"):
            shown = [d.dim_param or d.dim_value for d in dims]
            raise ExportError(f"exported graph has a static batch axis on {value.name!r}: {shown}")
