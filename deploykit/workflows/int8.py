"""The export's INT8 stages: ``calibration`` (right after ``build``: bad calibration input fails before any
graph work) and ``int8`` (after ``fp16``: the Q/DQ graph is built on the FP16 graph).

``int8`` calibrates on the FP32 graph (ONNX Runtime's calibrators), writes the TensorRT Q/DQ graph
(:func:`deploykit.transforms.int8.make_qdq`) and the fast CPU graph
(:func:`deploykit.transforms.int8.make_cpu_int8`), and gates both like every artifact: ONNX Runtime against
PyTorch FP32 on the FP16 check's images (``[tolerances.int8]``), plus the accuracy drop when the
calibration folder is labelled. When a graph fails, the sensitivity step keeps whole transformer blocks in
higher precision - Model Optimizer's advice for ViTs - worst first (each block's damage measured with
only that block quantized), until the gate passes; the manifest lists what was kept and why.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import click
import numpy as np
import onnx

from deploykit.core.errors import ConfigError, ParityError
from deploykit.core.onnx_io import serialize
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.preprocess import Preprocessing
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms import int8 as q
from deploykit.transforms.onnx_export import OUTPUT_NAME
from deploykit.validation.calibration import DEFAULT_CALIB_COUNT, calibration_set
from deploykit.validation.metrics import accuracy_check, sample_cosine
from deploykit.workflows.state import BULK_BATCH, ExportState, check_parity

#: what the warning says when no --calib folder is given
BUNDLED_WARNING = (
    "warning: calibrating INT8 on deploykit's bundled validation images; images from your own data "
    "(--calib DIR) calibrate better"
)


@dataclass
class Int8Options:
    """``--calib DIR``, ``--calib-count N``, ``--calib-method``; ``weight_scale`` multiplies named nodes'
    weight scales (a fault for tests: the gate and the sensitivity step must catch it)."""

    calib: str | None = None
    calib_count: int | None = None
    calib_method: str = "entropy"
    weight_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calib_method not in q.CALIB_METHODS:
            raise ConfigError(
                f"--calib-method must be one of {', '.join(q.CALIB_METHODS)}, got {self.calib_method!r}"
            )
        count = self.calib_count
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ConfigError(f"--calib-count must be a positive integer, got {count!r}")


def stage_calibration(state: ExportState) -> None:
    """The calibration images: ``--calib`` (a folder, or an ImageFolder: then labelled) preprocessed as
    the artifact is fed; else the FP16 check's images (the bundled photos and generated images)."""
    options: Int8Options = state.int8
    model = state.model
    if options.calib is None:
        click.echo(BUNDLED_WARNING, err=True)
        state.calibration = None
        return
    pre = Preprocessing.from_dict(vars(model.data_config))
    state.calibration = calibration_set(
        options.calib,
        pre,
        count=options.calib_count or DEFAULT_CALIB_COUNT,
        labels=state.prepared.labels,
        num_classes=int(model.num_classes),
        seed=state.config.seed,
    )


@dataclass
class _Gate:
    """The INT8 graphs' gate: parity against PyTorch FP32 on ``images`` (the calibration folder's, where
    the model will be deployed; else the FP16 check's) and, given ``labels``, the accuracy drop."""

    state: ExportState
    images: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None = None

    @property
    def fp32_accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return float((self.reference.argmax(1) == self.labels).mean())

    def logits(self, proto: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
        return run_batched(OrtRunner(serialize(proto)), images, BULK_BATCH * 4)

    def evaluate(self, proto: onnx.ModelProto) -> tuple[bool, dict]:
        state = self.state
        tol = state.config.tolerances("int8")
        logits = self.logits(proto, self.images)
        parity = check_parity("int8", self.reference, logits, tol)
        found: dict = {"parity": parity, "logits": logits}
        if self.labels is not None:
            predicted = logits.argmax(1)
            accuracy = float((predicted == self.labels).mean())
            found["accuracy"] = accuracy
            found["accuracy_check"] = accuracy_check(
                OUTPUT_NAME, self.fp32_accuracy, accuracy, tol.max_accuracy_drop, len(predicted)
            )
        found["passed"] = parity.passed and ("accuracy_check" not in found or found["accuracy_check"].passed)
        return found["passed"], found


def _damage(gate: _Gate, proto: onnx.ModelProto) -> float:
    """How far a graph's logits are from PyTorch FP32: 1 - the worst cosine similarity."""
    logits = gate.logits(proto, gate.images)
    return float(1.0 - np.min(sample_cosine(gate.reference, logits)))


def sensitivity(
    build: Callable[[Collection[str]], onnx.ModelProto],
    blocks: dict[str, list[str]],
    gate: _Gate,
) -> tuple[onnx.ModelProto, list[dict], dict]:
    """Keep whole blocks in higher precision, worst first, until ``gate`` passes. ``build(exclude)``
    makes the graph with ``exclude``'s nodes unquantized. Each block's damage is measured with only that
    block quantized. Returns the graph, the kept blocks (block, damage, reason) and the last evaluation;
    raises :class:`ParityError` when even keeping every block fails."""
    everything = [n for nodes in blocks.values() for n in nodes]
    damage = {
        block: _damage(gate, build([n for n in everything if n not in set(nodes)]))
        for block, nodes in blocks.items()
    }
    kept: list[dict] = []
    excluded: list[str] = []
    for block in sorted(damage, key=damage.get, reverse=True):
        excluded += blocks[block]
        kept.append(
            {
                "block": block,
                "nodes": len(blocks[block]),
                "damage": round(damage[block], 6),
                "reason": f"quantized alone it costs 1 - cosine {damage[block]:.2e}, the worst left",
            }
        )
        proto = build(excluded)
        passed, found = gate.evaluate(proto)
        if passed:
            return proto, kept, found
    raise ParityError("INT8 fails its gate even with every block kept in higher precision")


def _gated(
    build: Callable[[Collection[str]], onnx.ModelProto],
    blocks: dict[str, list[str]],
    gate: _Gate,
) -> tuple[onnx.ModelProto, dict, dict]:
    proto = build(())
    passed, found = gate.evaluate(proto)
    info: dict = {"kept_blocks": [], "first_try": _summary(found)}
    if not passed:
        try:
            proto, info["kept_blocks"], found = sensitivity(build, blocks, gate)
        except ParityError as exc:
            info["sensitivity"] = str(exc)  # the gate's failure is reported by the check below
    info["final"] = _summary(found)
    return proto, info, found


def _summary(found: dict) -> dict:
    parity = found["parity"]
    out = {
        "passed": found["passed"],
        "cosine_min": parity.worst_metric("cosine_min"),
        "top1": parity.worst_metric("top1"),
        "max_abs": parity.worst_metric("max_abs"),
    }
    if "accuracy" in found:
        out["accuracy"] = found["accuracy"]
    return out


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


def stage_int8(state: ExportState) -> None:
    """Calibrate, build and gate ``model.int8.onnx`` (TensorRT Q/DQ) and ``model.int8.cpu.onnx``."""
    from deploykit.transforms.lint import lint_model

    options: Int8Options = state.int8
    timings: dict[str, float] = {}
    t = time.perf_counter()
    calib = state.calibration
    images = calib.images if calib is not None else state.fp16_images[: options.calib_count or None]
    if calib is not None:  # checked where it will run: on the user's images, against PyTorch FP32
        torch_logits = run_batched(TorchRunner(state.model), calib.eval_images, state.config.batch.max)
        gate = _Gate(state, calib.eval_images, torch_logits, calib.eval_labels)
    else:
        gate = _Gate(state, state.fp16_images, state.fp16_reference)
    fp32_accuracy = gate.fp32_accuracy
    state.int8_images, state.int8_reference = gate.images, gate.reference
    with _quiet_onnxruntime_quantization():
        amax = q.calibrate(state.proto, images, options.calib_method)
        timings["calibrate"] = round(time.perf_counter() - t, 3)
        blocks = q.group_by_block(q.node_blocks(state.fp16_proto))

        def build_qdq(exclude: Collection[str]) -> onnx.ModelProto:
            return q.make_qdq(state.fp16_proto, amax, exclude=exclude, weight_scale=options.weight_scale)[0]

        t = time.perf_counter()
        qdq, qdq_info, qdq_found = _gated(build_qdq, blocks, gate)
        timings["tensorrt graph"] = round(time.perf_counter() - t, 3)
        # the CPU graph quantizes MatMul/Gemm only (ONNX Runtime's CPU provider has no fast ConvInteger)
        matmuls = {n.name for n in state.proto.graph.node if n.op_type in ("MatMul", "Gemm")}
        cpu_blocks = {b: [n for n in nodes if n in matmuls] for b, nodes in blocks.items()}
        cpu_blocks = {b: nodes for b, nodes in cpu_blocks.items() if nodes}

        def build_cpu(exclude: Collection[str]) -> onnx.ModelProto:
            return q.make_cpu_int8(state.proto, exclude=exclude)

        t = time.perf_counter()
        cpu, cpu_info, cpu_found = _gated(build_cpu, cpu_blocks, gate)
        timings["cpu graph"] = round(time.perf_counter() - t, 3)
    where = f"{len(gate.images)} {'calibration-folder' if calib is not None else 'validation'} images"
    state.check("int8", f"int8 (onnxruntime, {where})", qdq_found["logits"], qdq, gate.reference, "int8")
    state.check(
        "int8-cpu", f"int8-cpu (onnxruntime, {where})", cpu_found["logits"], cpu, gate.reference, "int8"
    )
    for key, found in (("int8", qdq_found), ("int8-cpu", cpu_found)):
        if "accuracy_check" in found:
            state.parity[key].checks.append(found["accuracy_check"])
    state.int8_proto, state.int8_cpu_proto = qdq, cpu
    state.int8_info = {
        "calibration": {
            **(
                calib.to_dict()
                if calib is not None
                else {"source": "bundled validation images", "images": len(images), "labelled": False}
            ),
            "method": options.calib_method,
        },
        "accuracy": (
            {"fp32": fp32_accuracy, "int8": qdq_found.get("accuracy"), "int8_cpu": cpu_found.get("accuracy")}
            if fp32_accuracy is not None
            else None
        ),
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
