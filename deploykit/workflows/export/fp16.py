"""The export's FP16 stages: ``fp16-reference`` queues the FP16 check's PyTorch work in the background
process (its >= :data:`~.products.FP16_IMAGES` images, the reference of those the FP32 stages do not have,
the range check's screen) on the core the ONNX export leaves idle; ``fp16`` collects it and makes the
mixed-precision graph (:func:`deploykit.transforms.fp16.make_fp16`), checked against PyTorch FP32."""

from __future__ import annotations

import time

import numpy as np

from deploykit.core.artifacts import Precision
from deploykit.runtime.base import run_batched
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.validation import validation_batch
from deploykit.workflows.export.products import (
    BULK_BATCH,
    FP16_IMAGES,
    RANGE_IMAGES,
    Built,
    ExportRun,
    Fp16Result,
    Fp32Graph,
    check_parity,
)

FP16 = "fp16"


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


def range_picks(built: Built) -> np.ndarray:
    """:data:`RANGE_IMAGES` of the FP32 stages' images, spread over their kinds (photos first, noise last)."""
    return np.unique(np.linspace(0, len(built.images) - 1, RANGE_IMAGES).round().astype(int))


def stage_fp16_reference(run: ExportRun, built: Built) -> None:
    """Queue the FP16 stage's work that needs no graph in the background process (see the module doc)."""
    config = run.config
    count = max(FP16_IMAGES, config.num_images)
    inputs_dir = run.request.inputs_dir
    run.jobs["inputs"] = run.worker.submit(fp16_inputs, count, config.seed, inputs_dir, BULK_BATCH)
    run.jobs["screen"] = run.worker.submit(fp16_screen, range_picks(built))


def stage_fp16(run: ExportRun, built: Built, graph: Fp32Graph) -> Fp16Result:
    """The mixed-precision graph (FP32 islands), validated on >= 64 images against PyTorch FP32 (the
    build stage's rows and the background process's). The range check runs over :data:`RANGE_IMAGES` of
    the FP32 stages' images, spread over their kinds (photos first, noise last)."""
    from deploykit.transforms.fp16 import make_fp16
    from deploykit.transforms.lint import lint_model
    from deploykit.workflows.export.background import collect

    t = time.perf_counter()
    inputs, screen = run.jobs["inputs"], run.jobs["screen"]
    (images, rows, computed), peak = collect(inputs, screen)
    computed = iter(computed)
    reference = np.stack([graph.reference[row] if row is not None else next(computed) for row in rows])
    waited = time.perf_counter() - t
    tol = run.config.tolerances(Precision.FP16)

    def gate(logits: np.ndarray) -> list:
        return check_parity(FP16, reference, logits, tol).checks

    proto, report = make_fp16(
        graph.proto,
        images,
        reference,
        gate,
        fp16_io=run.request.fp16_io,
        max_batch=BULK_BATCH,
        tol=tol,
        range_images=built.images[range_picks(built)],
        range_screen=peak,
    )
    label = f"fp16 (onnxruntime, {len(images)} images)"
    run.checks.record(
        FP16, label=label, reference=reference, candidate=report.logits, graph=proto, tolerances=tol
    )
    t = time.perf_counter()
    lint = lint_model(proto).to_dict()
    report.lap("lint", t)
    report.timings_s = {"background (wait)": round(waited, 3), **report.timings_s}
    io = Precision.FP16 if run.request.fp16_io else Precision.FP32
    info = {"io": io, "images": len(images), "lint": lint, **report.to_dict()}
    info["background"] = {
        "reference_images": sum(row is None for row in rows),
        "reused_images": sum(row is not None for row in rows),
        "seconds": {"images and reference": inputs.seconds, "range screen": screen.seconds},
        "notes": [job.note for job in (inputs, screen) if job.note],
    }
    return Fp16Result(proto=proto, images=images, reference=reference, info=info)
