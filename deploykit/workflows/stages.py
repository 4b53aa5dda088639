"""The export pipeline's stages, in order (:data:`STAGES`): build -> [calibration] -> rewrite ->
[fp16-reference] -> onnx -> simplify -> validate -> lint -> [fp16] -> [int8] -> [engine] -> manifest. Each
is a plain function over one :class:`~deploykit.workflows.state.ExportState`; its name is its progress line
and its key in the manifest. ``rewrite`` starts a background process (:mod:`deploykit.workflows.background`)
with the PyTorch work that needs no graph — the FP32 reference and the rewritten model's logits, which
``onnx`` collects after tracing; ``fp16-reference`` adds the FP16 check's images, their reference and the
range screen, which ``fp16`` collects."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploykit.core.errors import ExportError, first_line
from deploykit.core.interrupts import reraise_if_interrupted
from deploykit.core.onnx_io import serialize
from deploykit.core.scopes import carry_scopes
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms import rewrites
from deploykit.transforms.simplify import SimplifyResult, simplify_onnx
from deploykit.transforms.trace_cache import export_cached
from deploykit.validation import validation_batch
from deploykit.workflows.int8 import stage_calibration, stage_int8
from deploykit.workflows.publish import stage_engine, stage_manifest
from deploykit.workflows.state import (
    BULK_BATCH,
    FP16_IMAGES,
    RANGE_IMAGES,
    REPORT_NAME,
    ExportState,
    check_parity,
)


def stage_build(state: ExportState) -> None:
    """The preset (with weights) and the validation images (their PyTorch reference: :func:`stage_rewrite`)."""
    config = state.config
    state.model, state.weights_info = state.prepared.model, state.prepared.weights_info
    state.batch = validation_batch(state.model.data_config, config.num_images, config.seed, state.inputs_dir)


def torch_logits(context: dict, which: str, batch: int) -> np.ndarray:
    """A background job: PyTorch FP32 logits of the FP32 stages' images through ``context[which]``
    (``model``: the reference; ``rewritten``: the rewrite parity check)."""
    return run_batched(TorchRunner(context[which]), context["images"], batch)


def fp16_inputs(context: dict, count: int, seed: int, inputs_dir, batch: int) -> tuple:
    """A background job: the FP16 check's images, the row of each in the FP32 stages' images (or None)
    and the PyTorch FP32 logits of those that are not there (their rows are reused)."""
    model, known = context["model"], context["images"]
    images = validation_batch(model.data_config, count, seed, inputs_dir).images
    rows = {image.tobytes(): i for i, image in enumerate(known)}
    found = [rows.get(image.tobytes()) for image in images]
    extra = [i for i, row in enumerate(found) if row is None]
    return images, found, run_batched(TorchRunner(model), images[extra], batch)


def fp16_screen(context: dict, picks: np.ndarray) -> float:
    """A background job: the range check's PyTorch screen (max |x| over every op output of the rewritten
    model, i.e. the model the ONNX graph was exported from) on the FP32 stages' images ``picks``."""
    from deploykit.transforms.fp16 import torch_peak

    return torch_peak(context["rewritten"], context["images"][picks])


def stage_fp16_reference(state: ExportState) -> None:
    """Queue in the background process (:mod:`deploykit.workflows.background`) the FP16 stage's work that
    needs no graph, on the core the ONNX export leaves idle: the FP16 check's >= :data:`FP16_IMAGES` images
    with the PyTorch reference of those the FP32 stages do not have, then the range check's screen."""
    config = state.config
    count = max(FP16_IMAGES, config.num_images)
    state.jobs["inputs"] = state.worker.submit(fp16_inputs, count, config.seed, state.inputs_dir, BULK_BATCH)
    state.jobs["screen"] = state.worker.submit(fp16_screen, _range_picks(state))


def _range_picks(state: ExportState) -> np.ndarray:
    """:data:`RANGE_IMAGES` of the FP32 stages' images, spread over their kinds (photos first, noise last)."""
    return np.unique(np.linspace(0, len(state.images) - 1, RANGE_IMAGES).round().astype(int))


def stage_rewrite(state: ExportState) -> None:
    """Export-friendly module swaps; the background process starts on the PyTorch reference and the
    rewritten model's logits (checked by :func:`stage_onnx`, after tracing)."""
    from deploykit.workflows.background import Worker

    state.rewritten, state.records = rewrites.apply_rewrites(state.model)
    context = {"model": state.model, "rewritten": state.rewritten, "images": state.images}
    state.worker = Worker(state.staging, context)
    for which, key in (("model", "reference"), ("rewritten", "rewrites")):
        state.jobs[key] = state.worker.submit(torch_logits, which, state.config.batch.max)


def _collect_references(state: ExportState) -> None:
    """The PyTorch reference and the rewrite check, from the background process (or run here)."""
    from deploykit.workflows.background import collect

    state.reference, logits = collect(state.jobs["reference"], state.jobs["rewrites"])
    state.check("rewrites", "rewrites (torch)", logits, None)


def stage_onnx(state: ExportState) -> None:
    """torch.onnx.export (dynamo; the TorchScript exporter when dynamo fails, recorded in the manifest),
    through the trace cache (:mod:`deploykit.transforms.trace_cache`): a cached graph that fails its parity
    check is traced afresh."""
    proto = _export(state)
    state.exported = state.proto = proto
    logits = state.logits(proto)  # first: the background process may still be on the references
    _collect_references(state)
    result = state.check("onnx", "onnx (onnxruntime)", logits, proto)
    if state.trace_cache.status == "hit" and not result.passed:
        notes = [*state.trace_cache.notes, "the cached graph failed its parity check: traced afresh"]
        state.exported = state.proto = proto = _export(state, fresh=True)
        state.trace_cache.notes[:0] = notes
        state.check("onnx", "onnx (onnxruntime)", state.logits(proto), proto)


def _export(state: ExportState, fresh: bool = False):
    config = state.config
    args = (state.rewritten, state.input_size, config.opset)
    try:
        proto, state.trace_cache = export_cached(*args, config.exporter, config.batch.max, fresh=fresh)
    except ExportError as exc:
        reraise_if_interrupted(exc)  # never a fallback after an interrupt
        if config.exporter != "dynamo":
            raise
        state.exporter_notes.append(f"dynamo failed ({first_line(exc)}); fell back to torchscript")
        state.config = config = dataclasses.replace(config, exporter="torchscript")
        proto, state.trace_cache = export_cached(*args, config.exporter, config.batch.max, fresh=fresh)
    return proto


def stage_simplify(state: ExportState) -> None:
    """onnxsim (fallback onnxslim); a simplified graph that changes the numbers is not kept."""
    proto = state.proto
    simplified, simp = simplify_onnx(proto)
    carry_scopes(proto, simplified)  # the simplifiers drop node metadata: keep module scopes for --locate
    result = state.check("simplified", "simplified (onnxruntime)", state.logits(simplified), simplified)
    if not result.passed and simp.tool != "none":  # a simplifier that changes the numbers is not trusted:
        # its graph is discarded (the exported one passed its own check), so its check does not fail the export
        worst = result.worst()
        note = f"{simp.tool} output failed parity ({worst.describe() if worst else 'see log'}); kept the exported graph"
        simp = SimplifyResult("none", simp.nodes_before, simp.nodes_before, (*simp.notes, note))
        simplified = proto
        for checks in (state.parity, state.references, state.candidates, state.graphs):
            checks.pop("simplified")
    state.proto, state.simplify = simplified, simp


def stage_validate(state: ExportState) -> None:
    """The final FP32 file at several batch sizes through one ONNX Runtime session."""
    batch = state.config.batch
    limit = min(batch.max, len(state.images))
    sizes = sorted({s for s in (batch.min, 1, 3, 8, batch.opt) if s <= limit})
    runner = OrtRunner(serialize(state.proto))
    candidate = np.concatenate([run_batched(runner, state.images[:n], n) for n in sizes])
    reference = np.concatenate([state.reference[:n] for n in sizes])
    label = f"batch sizes {','.join(map(str, sizes))}"
    state.check("dynamic batch", label, candidate, state.proto, reference)


def stage_lint(state: ExportState) -> None:
    """The final graph against TensorRT's ONNX-parser operator table."""
    from deploykit.transforms.lint import lint_model

    state.lint = lint_model(state.proto)


def stage_fp16(state: ExportState) -> None:
    """The mixed-precision graph (FP32 islands), validated on >= 64 images against PyTorch FP32 (the
    build stage's rows and the background process's). The range check runs over :data:`RANGE_IMAGES` of
    the FP32 stages' images, spread over their kinds (photos first, noise last)."""
    from deploykit.transforms.fp16 import make_fp16
    from deploykit.transforms.lint import lint_model
    from deploykit.workflows.background import collect

    t = time.perf_counter()
    inputs, screen = state.jobs["inputs"], state.jobs["screen"]
    (state.fp16_images, state.fp16_rows, computed), peak = collect(inputs, screen)
    computed = iter(computed)
    state.fp16_reference = np.stack(
        [state.reference[row] if row is not None else next(computed) for row in state.fp16_rows]
    )
    waited = time.perf_counter() - t
    tol = state.config.tolerances("fp16")

    def passes(logits: np.ndarray) -> bool:
        return check_parity("fp16", state.fp16_reference, logits, tol).passed

    images = state.fp16_images
    proto, report = make_fp16(
        state.proto,
        images,
        state.fp16_reference,
        passes,
        fp16_io=state.fp16_io,
        max_batch=BULK_BATCH,
        tol=tol,
        range_images=state.images[_range_picks(state)],
        range_screen=peak,
    )
    label = f"fp16 (onnxruntime, {len(images)} images)"
    state.check("fp16", label, report.logits, proto, state.fp16_reference, "fp16")
    t = time.perf_counter()
    state.fp16_proto = proto
    lint = lint_model(proto).to_dict()
    report.lap("lint", t)
    report.timings_s = {"background (wait)": round(waited, 3), **report.timings_s}
    io = "fp16" if state.fp16_io else "fp32"
    state.fp16_info = {"io": io, "images": len(images), "lint": lint, **report.to_dict()}
    state.fp16_info["background"] = {
        "reference_images": sum(row is None for row in state.fp16_rows),
        "reused_images": sum(row is not None for row in state.fp16_rows),
        "seconds": {"images and reference": inputs.seconds, "range screen": screen.seconds},
        "notes": [job.note for job in (inputs, screen) if job.note],
    }


def _always(state: ExportState) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[ExportState], None]
    describe: Callable[[ExportState], str]
    enabled: Callable[[ExportState], bool] = _always
    #: runs only when every parity check so far passed (the export is rejected before it otherwise)
    needs_parity: bool = False


def _describe_build(state: ExportState) -> str:
    source = state.prepared.weights_source
    weights = {
        "file": f" with weights {state.weights}",
        "memory": " (a model in memory)",
        "random": " (random weights)",
    }[source]
    return f"{state.spec.name} ({state.spec.family}){weights}"


STAGES: tuple[Stage, ...] = (
    Stage("build", stage_build, _describe_build),
    Stage(
        "calibration",
        stage_calibration,
        lambda s: f"INT8 calibration images ({s.int8.calib or 'bundled'})",
        lambda s: s.int8 is not None,
    ),
    Stage(
        "rewrite",
        stage_rewrite,
        lambda s: "export-friendly module swaps; PyTorch reference and rewrite check in a background process",
    ),
    Stage(
        "fp16-reference",
        stage_fp16_reference,
        lambda s: "FP16 check's images, PyTorch reference and range screen, queued in the background process",
        lambda s: s.fp16,
    ),
    Stage("onnx", stage_onnx, lambda s: f"{s.config.exporter} exporter, opset {s.config.opset}"),
    Stage("simplify", stage_simplify, lambda s: "onnxsim (fallback onnxslim)", lambda s: s.config.simplify),
    Stage("validate", stage_validate, lambda s: f"{len(s.images)} images, batch sizes through one file"),
    Stage("lint", stage_lint, lambda s: "TensorRT ONNX-parser operator support"),
    Stage(
        "fp16",
        stage_fp16,
        lambda s: "mixed-precision graph with FP32 islands, sensitivity check",
        lambda s: s.fp16,
    ),
    Stage(
        "int8",
        stage_int8,
        lambda s: f"Q/DQ graph for TensorRT and dynamic INT8 for CPUs, {s.int8.calib_method} calibration",
        lambda s: s.int8 is not None,
        True,
    ),
    Stage("engine", stage_engine, lambda s: "TensorRT strongly typed build", lambda s: s.engine, True),
    Stage("manifest", stage_manifest, lambda s: f"manifest.json, {REPORT_NAME}, publish", needs_parity=True),
)
