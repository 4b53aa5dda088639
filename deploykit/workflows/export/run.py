"""The export pipeline: :func:`run_export` runs the stages of one :class:`~.request.ExportRequest`, in order,
each a function of the products it needs (:mod:`.products`):

build -> [calibration] -> rewrite -> [fp16-reference] -> onnx -> [simplify] -> validate -> lint -> [fp16]
-> [int8] -> [engine] -> manifest

Parity is re-checked after every transform, and the artifacts are published atomically: everything is
written into a staging directory first and only moved over the previous artifacts when every check passed.
A parity failure publishes nothing into the output directory; the rejected artifacts, the first diverging
module (``locate.json``) and ``report.html`` go to ``<out>/rejected/`` instead (:mod:`.publish`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from deploykit.core.config import ExportConfig
from deploykit.core.interrupts import reraise_if_interrupted
from deploykit.core.io import ensure_writable_dir, staging_dir
from deploykit.core.record import MANIFEST_NAME, WeightsSource
from deploykit.workflows.export import publish as pub
from deploykit.workflows.export.dataset import stage_dataset, stage_dataset_accuracy
from deploykit.workflows.export.fp16 import stage_fp16, stage_fp16_reference
from deploykit.workflows.export.int8 import stage_calibration, stage_int8
from deploykit.workflows.export.model import PreparedModel, from_memory, prepare_model
from deploykit.workflows.export.products import (
    REPORT_NAME,
    ExportResult,
    ExportRun,
    Products,
    Progress,
    Staged,
    silent,
)
from deploykit.workflows.export.request import ExportRequest
from deploykit.workflows.export.stages import (
    stage_build,
    stage_lint,
    stage_onnx,
    stage_rewrite,
    stage_simplify,
    stage_validate,
)

if TYPE_CHECKING:
    from torch import nn

T = TypeVar("T")


def run_export(request: ExportRequest, *, progress: Progress = silent) -> ExportResult:
    """Run ``request``: ``<out>/model.onnx`` (+ ``model.fp16.onnx`` with fp16, the INT8 files with int8),
    ``reference.npz``, ``manifest.json`` and ``report.html``; with ``engine``, build (or script) the
    TensorRT engine. ``progress(stage, message)`` hears of each stage. Raises ParityError if parity fails
    (nothing is published then; see the module doc); a bad model, checkpoint, flag or label file fails
    before anything is written."""
    prepared = _prepare(request)
    out = request.out_dir if request.out_dir is not None else Path("deploykit_out") / prepared.spec.name
    created = not out.exists()
    ensure_writable_dir(out)
    try:
        with staging_dir(out) as staging:
            run = ExportRun(request=request, prepared=prepared, out=out, staging=staging)
            try:
                manifest, staged = _run_stages(run, progress)
            finally:
                run.end_background()
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing was published: leave no empty folder behind
        raise
    sizes = ", ".join(f"{n} ({len(d) / 1e6:.1f} MB)" for n, d in staged.files.items())
    progress("done", f"{out}: {sizes}, {MANIFEST_NAME}, {REPORT_NAME}")
    return ExportResult(
        out_dir=out,
        onnx_path=out / "model.onnx",
        manifest_path=out / MANIFEST_NAME,
        manifest=manifest,
        parity=run.checks.parity,
    )


def _prepare(request: ExportRequest) -> PreparedModel:
    if isinstance(request.model, str):
        return prepare_model(
            request.model,
            config=request.config,
            weights=request.weights,
            weights_format=request.weights_format,
            labels=request.labels,
        )
    return from_memory(request.model, request.config, labels=request.labels)


class _Steps:
    """Runs one stage at a time: its progress line, its seconds (in ``run.timings``), an interrupt it
    swallowed, and — for stages that publish — the rejection when a check so far failed."""

    def __init__(self, run: ExportRun, progress: Progress) -> None:
        self.run, self.progress, self.t0 = run, progress, time.perf_counter()

    def __call__(
        self, name: str, message: str, stage: Callable[[], T], *, products: Products | None = None
    ) -> T:
        run = self.run
        if products is not None and run.checks.failed():
            pub.reject(run, products)
        self.progress(name, message)
        made = stage()
        reraise_if_interrupted()  # a stage that swallowed an interrupt publishes nothing
        run.timings[name] = round(time.perf_counter() - self.t0 - sum(run.timings.values()), 3)
        return made


def _run_stages(run: ExportRun, progress: Progress) -> tuple[dict[str, Any], Staged]:
    step = _Steps(run, progress)
    products = _graph_stages(run, step)
    request = run.request
    if request.int8 is not None:
        message = (
            f"Q/DQ graph for TensorRT and dynamic INT8 for CPUs, {request.int8.calib_method} calibration"
        )
        make = lambda: stage_int8(run, products)  # noqa: E731
        products = dataclasses.replace(products, int8=step("int8", message, make, products=products))
    if products.listing is not None:
        make = lambda: stage_dataset_accuracy(run, products, products.listing)  # noqa: E731
        found = step(
            "dataset", f"accuracy on {request.dataset}: PyTorch and every file", make, products=products
        )
        products = dataclasses.replace(products, dataset=found)
    staged = None
    if request.engine:

        def engine() -> dict[str, Any]:
            nonlocal staged
            staged = pub.stage_files(run, products)  # the engine is built from the staged file
            return pub.stage_engine(run, products)

        info = step("engine", "TensorRT strongly typed build", engine, products=products)
        products = dataclasses.replace(products, engine=info)

    def manifest() -> tuple[dict[str, Any], Staged]:
        files = staged or pub.stage_files(run, products)
        written = pub.write_manifest(run, products, files)
        pub.publish(run, written)
        return written, files

    return step("manifest", f"{MANIFEST_NAME}, {REPORT_NAME}, publish", manifest, products=products)


def _graph_stages(run: ExportRun, step: _Steps) -> Products:
    """build -> [dataset listing] -> [calibration] -> rewrite -> [fp16-reference] -> onnx -> [simplify] ->
    validate -> lint -> [fp16]: the FP32 graph checked (and the FP16 graph made)."""
    request, config = run.request, run.config
    built = step("build", _describe_build(run), lambda: stage_build(run))
    listing = calibration = None
    if request.dataset is not None:
        listing = step("dataset-list", f"labelled images of {request.dataset}", lambda: stage_dataset(run))
    if request.int8 is not None:
        source = request.int8.calib or "bundled"
        calibration = step(
            "calibration", f"INT8 calibration images ({source})", lambda: stage_calibration(run)
        )
    rewritten = step("rewrite", _REWRITE, lambda: stage_rewrite(run, built))
    if request.fp16:
        step("fp16-reference", _FP16_REFERENCE, lambda: stage_fp16_reference(run, built))
    message = f"{config.exporter} exporter, opset {config.opset}"
    graph = step("onnx", message, lambda: stage_onnx(run, built, rewritten))
    if config.simplify:
        graph = step("simplify", "onnxsim (fallback onnxslim)", lambda: stage_simplify(run, built, graph))
    message = f"{len(built.images)} images, batch sizes through one file"
    step("validate", message, lambda: stage_validate(run, built, graph))
    graph = step("lint", "TensorRT ONNX-parser operator support", lambda: stage_lint(graph))
    products = Products(
        built=built, calibration=calibration, listing=listing, rewritten=rewritten, graph=graph
    )
    if request.fp16:
        products = dataclasses.replace(
            products, fp16=step("fp16", _FP16, lambda: stage_fp16(run, built, graph))
        )
    return products


_REWRITE = "export-friendly module swaps; PyTorch reference and rewrite check in a background process"
_FP16_REFERENCE = "FP16 check's images, PyTorch reference and range screen, queued in the background process"
_FP16 = "mixed-precision graph with FP32 islands, sensitivity check"


def _describe_build(run: ExportRun) -> str:
    prepared = run.prepared
    weights = {
        WeightsSource.FILE: f" with weights {run.request.weights}",
        WeightsSource.MEMORY: " (a model in memory)",
        WeightsSource.RANDOM: " (random weights)",
    }[prepared.weights_source]
    return f"{prepared.spec.name} ({prepared.spec.family}){weights}"


def export(
    model: str | nn.Module,
    out_dir: str | Path | None = None,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    labels: str | Path | Sequence[str] | None = None,
    fp16: bool = False,
    fp16_io: bool = False,
    weights: str | Path | None = None,
    weights_format: str | None = None,
    config: str | Path | ExportConfig | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    inputs_dir: str | Path | None = None,
    engine: bool = False,
    progress: Progress | None = None,
    int8: bool = False,
    calib: str | Path | None = None,
    calib_count: int | None = None,
    calib_method: str = "entropy",
    dataset: str | Path | None = None,
) -> ExportResult:
    """``deploykit.export``: the Python entry point of ``deploykit export``, for a preset name (with
    ``weights``) or a model held in memory (an ``nn.Module`` of one of the five families, e.g. built with
    :func:`deploykit.models.create_model` and trained). The same request is built and checked as on the
    command line (:meth:`ExportRequest.create`: the same errors), the same stages run — rewrites, parity
    after every transform, FP16, lint, manifest, atomic publish — and for the same weights the CLI writes
    the same ``model.onnx`` bytes. ``config``: an export TOML (path) or an :class:`ExportConfig`;
    ``image_size``, ``num_classes`` and ``preprocessing`` (crop_pct, mean, std, interpolation) override it.
    ``int8`` also writes ``model.int8.onnx`` (TensorRT Q/DQ) and ``model.int8.cpu.onnx``, calibrated on
    ``calib`` (a folder of images or an ImageFolder; default: the bundled images) with ``calib_method``.
    ``dataset``: labelled images (an ImageFolder or a CSV of path,label rows) every file's accuracy is
    measured and gated on, recorded in the golden reference for ``validate --dataset`` without torch."""
    request = ExportRequest.create(
        model,
        out_dir=out_dir,
        config=config,
        image_size=image_size,
        num_classes=num_classes,
        labels=labels,
        preprocessing=preprocessing,
        weights=weights,
        weights_format=weights_format,
        inputs_dir=inputs_dir,
        fp16=fp16,
        fp16_io=fp16_io,
        int8=int8,
        calib=calib,
        calib_count=calib_count,
        calib_method=calib_method if int8 or calib_method != "entropy" else None,
        engine=engine,
        dataset=dataset,
    )
    return run_export(request, progress=progress or silent)
