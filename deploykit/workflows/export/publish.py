"""Publishing an export: the ONNX files with their records and the golden reference staged
(:func:`stage_files`), the engine stage, ``manifest.json`` and ``report.html``, all moved into place
atomically (:func:`publish`); or, when parity failed, everything moved to ``rejected/`` with the first
diverging module (``locate.json``, :func:`reject`)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import deploykit
from deploykit.core.artifacts import Precision, Variant
from deploykit.core.errors import ParityError
from deploykit.core.io import atomic_write_bytes, atomic_write_text, sha256_bytes
from deploykit.core.onnx_io import serialize
from deploykit.core.record import (
    MANIFEST_NAME,
    ArtifactRecord,
    listed_artifacts,
    write_manifest_text,
    write_metadata,
)
from deploykit.transforms.onnx_export import INPUT_NAME
from deploykit.validation.reference import REFERENCE_NAME, pixels_u8, reference_bytes
from deploykit.workflows.export.manifest import build_manifest, jsonable
from deploykit.workflows.export.model import model_record
from deploykit.workflows.export.products import REPORT_NAME, ExportRun, Products, Staged

#: what any export may write beside its manifest (a previous export's files go when the new one lacks them)
DEPLOYKIT_FILES = (
    *(variant.file for variant in Variant),
    "model.engine",
    "model.engine.json",
    "model.int8.engine",
    "model.int8.engine.json",
    "build_engine.sh",
    REFERENCE_NAME,
    REPORT_NAME,
    "locate.json",
)
#: INT8 images (from the calibration folder) the golden reference keeps besides the validation images
REFERENCE_INT8_IMAGES = 16
#: the check whose result each file records
_CHECK_OF = {
    Variant.FP32: "dynamic batch",
    Variant.FP16: "fp16",
    Variant.INT8: "int8",
    Variant.INT8_CPU: "int8-cpu",
}


# ------------------------------------------------------------------------------------------- files
def export_record(
    run: ExportRun, products: Products, *, variant: Variant, lint: int, reference: str
) -> ArtifactRecord:
    """The record a file of this export carries: the model, its ``variant``, its own parity and lint, and
    the golden reference's sha256."""
    result = run.checks.parity[_CHECK_OF[variant]]
    prepared, graph = run.prepared, products.graph
    model = model_record(prepared)
    return ArtifactRecord(
        version=deploykit.__version__,
        preset=prepared.spec.name,
        family=prepared.spec.family,
        input={"name": INPUT_NAME, "shape": ["batch", *run.input_size]},
        preprocessing=jsonable(vars(run.model.data_config)),
        rewrites=tuple(r.name for r in products.rewritten.records),
        opset=run.config.opset,
        exporter=graph.exporter,
        torch=torch.__version__,
        model_args=model["model_args"],
        weights_state_sha256=model["weights_state_sha256"],
        labels=prepared.labels,
        variant=variant,
        parity={
            "max_abs": result.worst_metric("max_abs"),
            "cosine_min": result.worst_metric("cosine_min"),
            "top1": result.worst_metric("top1"),
            "passed": result.passed,
        },
        lint_violations=lint,
        reference_sha256=reference,
    )


def stage_files(run: ExportRun, products: Products) -> Staged:
    """The golden reference and every ONNX file made so far (with its record as metadata), written into
    the staging folder."""
    golden, reference = golden_reference(run, products)  # first: every ONNX file records its sha256
    sha = reference["sha256"]

    def finish(graph: onnx.ModelProto, variant: Variant, lint: int) -> bytes:
        record = export_record(run, products, variant=variant, lint=lint, reference=sha)
        write_metadata(graph, record.to_metadata())
        return serialize(graph)

    graph = products.graph
    files = {Variant.FP32.file: finish(graph.proto, Variant.FP32, len(graph.lint.violations))}
    fp32 = len(files[Variant.FP32.file])
    fp16_extra, int8_extra = {}, {}
    if products.fp16 is not None:
        lint = len(products.fp16.info["lint"]["violations"])
        files[Variant.FP16.file] = finish(products.fp16.proto, Variant.FP16, lint)
        fp16_extra["size_ratio"] = round(len(files[Variant.FP16.file]) / fp32, 4)
    if products.int8 is not None:
        int8 = products.int8
        lint = len(int8.info["tensorrt"]["lint"]["violations"])
        files[Variant.INT8.file] = finish(int8.proto, Variant.INT8, lint)
        files[Variant.INT8_CPU.file] = finish(int8.cpu_proto, Variant.INT8_CPU, 0)
        for key, variant in (("tensorrt", Variant.INT8), ("cpu", Variant.INT8_CPU)):
            int8_extra[key] = {"size_ratio": round(len(files[variant.file]) / fp32, 4)}
    files[REFERENCE_NAME] = golden
    for name, data in files.items():
        atomic_write_bytes(run.staging / name, data)
    return Staged(files=files, reference=reference, fp16_extra=fp16_extra, int8_extra=int8_extra)


def golden_reference(run: ExportRun, products: Products) -> tuple[bytes, dict[str, Any]]:
    """``reference.npz`` (:mod:`deploykit.validation.reference`) and its record: the FP32 validation images
    as uint8 after resize and crop with their PyTorch FP32 outputs (and, for INT8 with a calibration
    folder, up to :data:`REFERENCE_INT8_IMAGES` of its images), the tolerances per precision and the
    model's identity."""
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.preprocess import Preprocessing
    from deploykit.runtime.torch_runner import TorchRunner

    built, graph, prepared = products.built, products.graph, run.prepared
    data_config = jsonable(vars(run.model.data_config))
    pre = Preprocessing.from_dict(data_config)
    pixels = pixels_u8(built.images, pre)
    outputs = graph.reference
    stored = pre.normalize(pixels.astype(np.float32) / 255.0)
    if not np.array_equal(stored, built.images):
        # images that are not whole uint8 steps (none today): the reference is computed on what is stored
        outputs = run_batched(TorchRunner(run.model), stored, run.config.batch.max)
    int8 = None
    if products.calibration is not None and products.int8 is not None:
        n = REFERENCE_INT8_IMAGES
        int8 = (pixels_u8(products.int8.images[:n], pre), products.int8.reference[:n])
    model = model_record(prepared)
    identity = {
        "preset": prepared.spec.name,
        "family": prepared.spec.family,
        "model_args": model["model_args"],
        "weights_state_sha256": model["weights_state_sha256"],
        "random_weights": prepared.random_weights,
        "input": {"name": INPUT_NAME, "shape": ["batch", *run.input_size]},
        "preprocessing": data_config,
    }
    tolerances = {p.value: dataclasses.asdict(run.config.tolerances(p)) for p in Precision}
    names = list(built.batch.names)
    recorded = products.dataset.recorded if products.dataset is not None else None
    data = reference_bytes(
        pixels, outputs, tolerances=tolerances, identity=identity, names=names, int8=int8, dataset=recorded
    )
    info = {
        "file": REFERENCE_NAME,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "images": len(pixels),
        "int8_images": 0 if int8 is None else len(int8[0]),
        "dataset_images": 0 if recorded is None else len(recorded.rows),
    }
    return data, info


# ------------------------------------------------------------------------------------------ engine
def stage_engine(run: ExportRun, products: Products) -> dict[str, Any]:
    """The TensorRT engine of the staged graph (build_engine.sh where TensorRT or a GPU is missing)."""
    from deploykit.workflows.build import build_or_script, export_engine_info

    source = (Variant.FP16 if run.request.fp16 else Variant.FP32).file
    int8 = run.staging / Variant.INT8.file  # built too, strongly typed (explicit Q/DQ needs no calibrator)
    outcome = build_or_script(
        run.staging / source,
        engine_path=run.staging / "model.engine",
        config=run.config,
        timing_cache=run.request.timing_cache,
        script_cache_name="timing.cache",
        input_name=INPUT_NAME,
        input_chw=run.input_size,
        expect_fp16=run.request.fp16,
        extra_builds=[(int8, run.staging / "model.int8.engine")] if int8.is_file() else [],
    )
    return export_engine_info(outcome, source)


# ----------------------------------------------------------------------------------------- publish
def write_manifest(run: ExportRun, products: Products, staged: Staged) -> dict[str, Any]:
    """``manifest.json`` and ``report.html`` in the staging folder; the manifest."""
    from deploykit.workflows.export.report import render_report

    manifest = build_manifest(run, products, staged)
    atomic_write_text(run.staging / MANIFEST_NAME, write_manifest_text(manifest))
    atomic_write_text(run.staging / REPORT_NAME, render_report(manifest, dataset=dataset_html(run, products)))
    return manifest


def dataset_html(run: ExportRun, products: Products) -> str | None:
    """report.html's dataset section: the flips of the lowest-precision file against PyTorch."""
    if products.dataset is None:
        return None
    from deploykit.runtime.postprocess import class_labels
    from deploykit.workflows.dataset_page import dataset_section
    from deploykit.workflows.export.dataset import TORCH, lowest_precision

    result = products.dataset
    variant = lowest_precision(result)
    classes = class_labels(int(run.model.num_classes), run.prepared.labels)
    paired = None
    info = result.info["files"].get(variant.file)
    return dataset_section(
        found=result.found, paired=paired, checks=[], classes=classes, artifact=variant, reference=TORCH,
        caption=f"Images that changed their answer between PyTorch FP32 and {variant.file}"
        + (f" (top-1 {info['artifact_top1']:.2%} vs {info['reference_top1']:.2%})" if info else ""),
    )  # fmt: skip


def publish(run: ExportRun, manifest: dict[str, Any]) -> None:
    """Everything staged moved into place; what an earlier export wrote and this one did not (an old
    ``model.fp16.onnx``, ``rejected/``) goes, so the folder holds exactly what the new manifest lists (and
    files deploykit did not write)."""
    earlier = _published_files(run.out)
    published = [*manifest["artifacts"], REPORT_NAME, MANIFEST_NAME]
    # models first, manifest last: a published manifest never describes a missing file
    for name in published:
        (run.staging / name).replace(run.out / name)
    for name in sorted(earlier - set(published)):
        (run.out / name).unlink(missing_ok=True)
    shutil.rmtree(run.out / "rejected", ignore_errors=True)


def _published_files(out: Path) -> set[str]:
    """The files a previous export published in ``out``: its manifest's artifacts, and deploykit's names."""
    return {n for n in listed_artifacts(out) | set(DEPLOYKIT_FILES) if (out / n).is_file()}


def reject(run: ExportRun, products: Products) -> None:
    """Parity failed: find the first diverging module, move everything to ``rejected/``, raise."""
    key = run.checks.failed()
    result = run.checks.parity[key]
    products = dataclasses.replace(products, locate=_locate(run, products, key))
    run.end_background()
    write_manifest(run, products, stage_files(run, products))
    if products.locate is not None:
        text = json.dumps(products.locate.to_dict(), indent=2) + "\n"
        atomic_write_text(run.staging / "locate.json", text)
    rejected = run.out / "rejected"
    shutil.rmtree(rejected, ignore_errors=True)
    run.staging.rename(rejected)
    run.staging.mkdir()  # staging_dir removes it on exit
    fail = result.worst()
    where = f"; {products.locate.describe()}" if products.locate is not None and products.locate.first else ""
    raise ParityError(
        f"parity failed at stage {result.stage!r}: {fail.describe() if fail else 'see manifest'}{where}; "
        f"nothing was published, rejected artifacts are in {rejected}"
    )


def _locate(run: ExportRun, products: Products, key: str):
    """The first diverging module of the failed check ``key`` (None for the batch-size check, whose rows
    repeat images)."""
    from deploykit.workflows.locate import locate_failure

    variant = next((v for v, check in _CHECK_OF.items() if check == key), Variant.FP32)
    images = products.built.images
    if variant is Variant.FP16:
        images = products.fp16.images
    elif variant.precision is Precision.INT8:
        images = products.int8.images
    checks = run.checks
    if len(checks.candidates[key]) != len(images):
        return None
    return locate_failure(
        run.model,
        images,
        checks.references[key],
        checks.candidates[key],
        fp32=run.config.fp32,
        tol=run.config.tolerances(variant.precision),
        graph=checks.graphs[key],
        stage=key,
        rewritten=products.rewritten.module,
    )
