"""The export's INT8 stages: ``calibration`` (right after ``build``: bad calibration input fails before any
graph work) and ``int8`` (after ``fp16``: the Q/DQ graph is built on the FP16 graph).

``int8`` calibrates on the FP32 graph (ONNX Runtime's calibrators), writes the TensorRT Q/DQ graph
(:func:`deploykit.transforms.int8.make_qdq`) and the fast CPU graph
(:func:`deploykit.transforms.int8.make_cpu_int8`), and gates both like every artifact: ONNX Runtime against
PyTorch FP32 on the FP16 check's images (``[tolerances.int8]``), plus the accuracy drop when the
calibration folder is labelled. The graphs come from the gated graph -> graph transforms of
:mod:`deploykit.transforms.int8_gated` (``quantize_qdq``, ``quantize_cpu``): when a graph fails, they keep
whole transformer blocks in higher precision - Model Optimizer's advice for ViTs - worst first (each
block's damage measured with only that block quantized), until the gate passes; the manifest lists what
was kept and why. This module wires the stages: images, reference, options.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings

from deploykit.core.artifacts import Precision
from deploykit.core.errors import DeployKitWarning
from deploykit.runtime.base import run_batched
from deploykit.runtime.preprocess import Preprocessing
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms import int8 as q
from deploykit.transforms import int8_gated
from deploykit.transforms.lint import lint_model
from deploykit.transforms.onnx_export import OUTPUT_NAME
from deploykit.validation.calibration import DEFAULT_CALIB_COUNT, CalibrationSet, calibration_set
from deploykit.validation.metrics import CheckKind
from deploykit.workflows.export.dataset import gate_images
from deploykit.workflows.export.products import BULK_BATCH, ExportRun, Int8Result, Products

#: what the warning says when no --calib folder is given
BUNDLED_WARNING = (
    "calibrating INT8 on deploykit's bundled validation images; images from your own data "
    "(--calib DIR) calibrate better"
)


def stage_calibration(run: ExportRun) -> CalibrationSet | None:
    """The calibration images: ``--calib`` (a folder, or an ImageFolder: then labelled) preprocessed as
    the artifact is fed; else None: the FP16 check's images (the bundled photos and generated images), with
    a warning."""
    options = run.request.int8
    model = run.model
    if options.calib is None:
        warnings.warn(BUNDLED_WARNING, DeployKitWarning, stacklevel=2)
        return None
    pre = Preprocessing.from_data_config(model.data_config)
    return calibration_set(
        options.calib,
        pre,
        count=options.calib_count or DEFAULT_CALIB_COUNT,
        labels=run.prepared.labels,
        num_classes=int(model.num_classes),
        seed=run.config.seed,
    )


@contextlib.contextmanager
def _quiet_onnxruntime_quantization():
    """onnxruntime.quantization logs advice on the root logger (``run pre-processing``): not the user's."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def stage_int8(run: ExportRun, products: Products) -> Int8Result:
    """Calibrate, build and gate ``model.int8.onnx`` (TensorRT Q/DQ) and ``model.int8.cpu.onnx``."""
    graph, fp16, calibration = products.graph, products.fp16, products.calibration
    options = run.request.int8
    timings: dict[str, float] = {}
    t = time.perf_counter()
    images = calibration.images if calibration is not None else fp16.images[: options.calib_count or None]
    gate = _gate(run, products)
    with _quiet_onnxruntime_quantization():
        amax = q.calibrate(graph.proto, images, options.calib_method)
        timings["calibrate"] = round(time.perf_counter() - t, 3)
        blocks = q.group_by_block(q.node_blocks(fp16.proto))
        t = time.perf_counter()
        qdq, qdq_info, qdq_found = int8_gated.quantize_qdq(
            fp16.proto, amax, blocks, gate, weight_scale=dict(options.weight_scale)
        )
        timings["tensorrt graph"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        cpu, cpu_info, cpu_found = int8_gated.quantize_cpu(graph.proto, blocks, gate)
        timings["cpu graph"] = round(time.perf_counter() - t, 3)
    kind = (
        "dataset" if products.listing else "calibration-folder" if calibration is not None else "validation"
    )
    where = f"{len(gate.images)} {kind} images"
    tol = run.config.tolerances(Precision.INT8)
    for key, proto, found in (("int8", qdq, qdq_found), ("int8-cpu", cpu, cpu_found)):
        label = f"{key} (onnxruntime, {where})"
        common = {"reference": gate.reference, "graph": proto, "tolerances": tol}
        parity = run.checks.record(key, label=label, candidate=found.logits, **common)
        parity.checks.extend(c for c in found.checks if c.kind is CheckKind.ACCURACY)
    info = {
        "calibration": {**_calibration_record(calibration, images), "method": options.calib_method},
        "accuracy": _accuracy(gate.fp32_accuracy, qdq_info, cpu_info),
        "tensorrt": {
            "file": "model.int8.onnx",
            "quantized_nodes": len([n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]),
            "qdq_nodes": len(q.qdq_nodes(qdq)),
            "lint": lint_model(qdq).to_dict(),
            **qdq_info,
        },
        "cpu": {"file": "model.int8.cpu.onnx", **cpu_info},
        "blocks": sorted(blocks),
        "timings_s": timings,
    }
    return Int8Result(proto=qdq, cpu_proto=cpu, images=gate.images, reference=gate.reference, info=info)


def _calibration_record(calibration: CalibrationSet | None, images) -> dict:
    if calibration is not None:
        return calibration.to_dict()
    return {"source": "bundled validation images", "images": len(images), "labelled": False}


def _accuracy(fp32: float | None, qdq_info: dict, cpu_info: dict) -> dict | None:
    if fp32 is None:
        return None
    return {
        "fp32": fp32,
        "int8": qdq_info["final"].get("accuracy"),
        "int8_cpu": cpu_info["final"].get("accuracy"),
    }


def _gate(run: ExportRun, products: Products) -> int8_gated.Int8Gate:
    """The INT8 graphs' gate: parity against PyTorch FP32 and the accuracy drop on the ``--dataset``'s
    images (an even draw); else on the calibration folder's images (where the model will be deployed; with
    their labels, the accuracy drop too); else on the FP16 check's images."""
    tol = run.config.tolerances(Precision.INT8)
    common = {"tolerances": tol, "output": OUTPUT_NAME, "batch": BULK_BATCH * 4}
    calibration = products.calibration
    if products.listing is not None:
        images, labels = gate_images(run, products.listing)
    elif calibration is not None:
        images, labels = calibration.eval_images, calibration.eval_labels
    else:
        return int8_gated.Int8Gate(images=products.fp16.images, reference=products.fp16.reference, **common)
    # checked where it will run: on the user's images, against PyTorch FP32
    torch_logits = run_batched(TorchRunner(run.model), images, run.config.batch.max)
    return int8_gated.Int8Gate(images=images, reference=torch_logits, labels=labels, **common)
