"""``deploykit export --dataset DIR``: the user's labelled images, read when the export starts (a bad folder
fails before any graph work) and run, once every graph is made, through PyTorch FP32 and every ONNX file in
one pass (:mod:`deploykit.workflows.dataset_pass`). Their accuracies go side by side into the manifest and
``report.html``; each file's top-1 drop against PyTorch is an ``accuracy`` record of its check (the
precision's ``max_accuracy_drop``), so a file that loses accuracy is rejected like one that loses parity;
and the golden reference records the dataset — every image's path, sha256 and label — with PyTorch's
answers, for ``validate --dataset`` on a device without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deploykit.core.artifacts import Precision, Variant
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation.accuracy import accuracy_checks, paired_accuracy, topk_hits
from deploykit.validation.calibration import MAX_EVAL_IMAGES
from deploykit.validation.dataset import LabelledDataset, fingerprint, read_dataset, sample_images
from deploykit.validation.reference import RecordedDataset
from deploykit.workflows.dataset_pass import DatasetPass, run_dataset_pass
from deploykit.workflows.export.products import ExportRun, Products

TORCH = "pytorch"
#: the check of each file, which its accuracy record joins
CHECK_OF = {
    Variant.FP32: "dynamic batch",
    Variant.FP16: "fp16",
    Variant.INT8: "int8",
    Variant.INT8_CPU: "int8-cpu",
}


@dataclass(frozen=True, kw_only=True)
class DatasetResult:
    """The dataset, the pass over it, what the golden reference records of it and the manifest's block."""

    listing: LabelledDataset
    found: DatasetPass
    recorded: RecordedDataset
    info: dict[str, Any]


def preprocessing_of(run: ExportRun) -> Preprocessing:
    return Preprocessing.from_data_config(run.model.data_config)


def stage_dataset(run: ExportRun) -> LabelledDataset:
    """The dataset's listing: every image and its class (a class folder that names no class, an empty
    folder, a file that is not an image, a CSV row with a missing file or unknown label: one line)."""
    return read_dataset(
        run.request.dataset, labels=run.prepared.labels, num_classes=int(run.model.num_classes)
    )


def gate_images(run: ExportRun, listing: LabelledDataset) -> tuple[np.ndarray, np.ndarray]:
    """The images the INT8 gate and its block sensitivity measure accuracy on: an even draw of up to
    :data:`MAX_EVAL_IMAGES` of the dataset, with their labels."""
    return sample_images(listing, preprocessing_of(run), count=MAX_EVAL_IMAGES, seed=run.config.seed)


def stage_dataset_accuracy(run: ExportRun, products: Products, listing: LabelledDataset) -> DatasetResult:
    """PyTorch FP32 and every ONNX file over the whole dataset; each file's accuracy record joins its check."""
    from deploykit.runtime.torch_runner import TorchRunner

    graphs = {Variant.FP32: products.graph.proto}
    if products.fp16 is not None:
        graphs[Variant.FP16] = products.fp16.proto
    if products.int8 is not None:
        graphs[Variant.INT8], graphs[Variant.INT8_CPU] = products.int8.proto, products.int8.cpu_proto
    runners = {TORCH: TorchRunner(run.model)}
    runners |= {variant: OrtRunner(g.SerializeToString(), spin=False) for variant, g in graphs.items()}
    found = run_dataset_pass(listing, preprocessing_of(run), runners)
    labels, torch_answers = found.labels, found.answers[TORCH]
    per_file = {}
    for variant in graphs:
        paired = paired_accuracy(labels, torch_answers.topk, found.answers[variant].topk)
        tol = run.config.tolerances(variant.precision)
        checks = accuracy_checks(
            paired, artifact_top1=paired.artifact_top1, max_drop=tol.max_accuracy_drop, min_accuracy=None
        )
        run.checks.parity[CHECK_OF[variant]].checks.extend(checks)
        per_file[variant.file] = {
            **paired.to_dict(str(listing.source)),
            "gated": [c.to_dict() for c in checks],
        }
    recorded = RecordedDataset(
        source=str(listing.source),
        sha256=fingerprint(found.rows),
        rows=tuple(found.rows),
        top5=torch_answers.topk,
        probs=torch_answers.probs,
        top1_accuracy=float(topk_hits(torch_answers.topk, labels, 1).mean()),
        top5_accuracy=float(topk_hits(torch_answers.topk, labels, 5).mean()),
    )
    info = {
        "source": str(listing.source),
        "images": len(found.rows),
        "sha256": recorded.sha256,
        "seconds": round(found.seconds, 3),
        "images_per_second": round(found.images_per_second, 2),
        "batch": found.batch,
        TORCH: {"top1": recorded.top1_accuracy, "top5": recorded.top5_accuracy},
        "files": per_file,
        "flipped_images": len(found.thumbnails),
    }
    return DatasetResult(listing=listing, found=found, recorded=recorded, info=info)


def lowest_precision(result: DatasetResult) -> str:
    """The answers of the lowest-precision file of the pass (the one report.html shows flips for)."""
    answers = result.found.answers
    for variant in (Variant.INT8, Variant.INT8_CPU, Variant.FP16, Variant.FP32):
        if variant in answers:
            return variant
    return Precision.FP32
