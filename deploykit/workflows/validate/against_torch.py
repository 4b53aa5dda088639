"""Parity against PyTorch: the rebuilt model and the artifact on the same images, ``--locate`` on failure."""

from __future__ import annotations

from pathlib import Path

from deploykit.core.artifacts import ENGINE_SUFFIXES, Variant
from deploykit.core.config import ExportConfig, default_config
from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import sha256_file
from deploykit.runtime.base import run_batched
from deploykit.runtime.preprocess import Preprocessing
from deploykit.validation.inputs import validation_batch
from deploykit.validation.locate import LocateReport
from deploykit.workflows.validate import on_dataset
from deploykit.workflows.validate.against_reference import golden_of, reference_fact
from deploykit.workflows.validate.artifact import (
    artifact_parity,
    artifact_runner,
    engine_source,
    read_artifact,
)
from deploykit.workflows.validate.on_dataset import DatasetRequest
from deploykit.workflows.validate.rebuild import artifact_preset, rebuild_model
from deploykit.workflows.validate.report import ValidationReport


def validate_artifact(
    artifact: str | Path,
    preset: str | None = None,
    *,
    weights: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    weights_format: str | None = None,
    locate: bool = False,
    reference: str | Path | None = None,
    dataset: DatasetRequest | None = None,
) -> ValidationReport:
    """Parity of ``artifact`` against the PyTorch model it was exported from (its recorded preset, model
    args and weights; ``preset`` and ``weights``, when given, must agree with the record: see
    :func:`rebuild_model`); with ``locate``, a failure is traced to the first diverging module (no extra
    work when parity holds). With ``reference`` (a golden ``reference.npz``) the model's outputs are
    recomputed on the reference's images, which the report names. With ``dataset`` both run on every image
    of the user's labelled dataset instead: parity on those images, and the accuracy records."""
    path = Path(artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    record, proto = read_artifact(path)
    spec = artifact_preset(path, record, preset)
    config = config or default_config(spec.family)
    prepared = rebuild_model(path, record, spec, config, weights=weights, weights_format=weights_format)
    model = prepared.model
    runner, precision = artifact_runner(path, proto, tuple(model.input_size))
    common = {"prepared": prepared, "runner": runner, "precision": precision, "config": config}
    if dataset is not None:
        if inputs_dir is not None or reference is not None:
            given = "--inputs" if inputs_dir is not None else "--reference"
            raise ConfigError(f"--dataset and {given} both choose the images: give one")
        return _on_dataset(path, record, preset=spec.name, dataset=dataset, **common)
    golden = golden_of(path, record, reference) if reference is not None else None
    report, found = _on_images(path, preset=spec.name, golden=golden, inputs_dir=inputs_dir, **common)
    if locate and not report.parity.passed:
        images, reference_out, candidate = found
        report.locate = _locate(
            prepared.model,
            path,
            graph=proto,
            precision=precision,
            images=images,
            reference=reference_out,
            candidate=candidate,
            config=config,
        )
    return report


def _on_images(path: Path, *, preset: str, golden, inputs_dir, prepared, runner, precision, config):
    """Parity on the validation images (or the golden reference's): the report, and ``(images, PyTorch's
    outputs, the artifact's)`` for ``--locate``."""
    from deploykit.runtime.torch_runner import TorchRunner

    model = prepared.model
    images = _images(model, config, precision, golden=golden, inputs_dir=inputs_dir)
    reference_out = run_batched(TorchRunner(model), images, config.batch.max)
    candidate = run_batched(runner, images, config.batch.max)
    parity = artifact_parity(reference_out, candidate, config.tolerances(precision), precision)
    report = _report(
        path,
        preset=preset,
        prepared=prepared,
        runner=runner,
        precision=precision,
        parity=parity,
        images=len(images),
        inputs=str(inputs_dir) if inputs_dir else "built-in" if golden is None else "reference",
        reference=None if golden is None else reference_fact(golden, "recomputed with PyTorch"),
    )
    return report, (images, reference_out, candidate)


def _on_dataset(
    path: Path, record, preset: str, prepared, runner, precision, config, dataset
) -> ValidationReport:
    """Both the rebuilt model and the artifact over the user's dataset: parity on its images, accuracy."""
    from deploykit.runtime.torch_runner import TorchRunner

    model = prepared.model
    tolerances = config.tolerances(precision)
    side = on_dataset.ArtifactSide(
        runner=runner,
        labels=record.checked_labels(),
        num_classes=int(model.num_classes),
        max_drop=tolerances.max_accuracy_drop,
    )
    preprocessing = Preprocessing.from_data_config(model.data_config)
    outcome = on_dataset.with_torch(dataset, preprocessing, side=side, reference=TorchRunner(model))
    answers = outcome.found.answers
    parity = artifact_parity(answers["reference"].logits, answers["artifact"].logits, tolerances, precision)
    return _report(
        path,
        preset=preset,
        prepared=prepared,
        runner=runner,
        precision=precision,
        parity=parity,
        images=len(outcome.found.rows),
        inputs=str(dataset.path),
        dataset=outcome,
    )


def _report(
    path: Path,
    *,
    preset: str,
    prepared,
    runner,
    precision: Variant,
    parity,
    images: int,
    inputs: str,
    reference=None,
    dataset=None,
) -> ValidationReport:
    """The report of a run against the rebuilt model: its facts name the images, their source, the reference
    file (if any) and the model."""
    facts = {
        "sha256": sha256_file(path),
        "images": images,
        "inputs": inputs,
        "reference": reference,
        **_model_facts(prepared),
    }
    return ValidationReport(
        artifact=str(path),
        preset=preset,
        precision=precision,
        runtime=runner.name,
        parity=parity,
        facts=facts,
        dataset=dataset,
    )


def _model_facts(prepared) -> dict:
    info = prepared.weights_info
    return {
        "weights": info.to_dict() if info else None,
        "model_args": dict(prepared.model_args),
        "random_weights": prepared.random_weights,
    }


def _images(model, config: ExportConfig, precision, *, golden, inputs_dir):
    """The images both run on: the golden reference's, else the validation batch (>= 64 images for FP16
    and INT8 files)."""
    if golden is not None:
        if inputs_dir is not None:
            raise ConfigError("--inputs and --reference both choose the images: give one")
        return golden.batch(precision)[0]
    count = config.num_images if precision is Variant.FP32 else max(config.num_images, 64)
    return validation_batch(model.data_config, count, config.seed, inputs_dir).images


def _locate(
    model, path: Path, *, graph, precision: Variant, images, reference, candidate, config: ExportConfig
) -> LocateReport:
    stage = "fp16" if precision is Variant.FP16 else "onnx"
    if path.suffix in ENGINE_SUFFIXES:
        graph, stage = engine_source(path), "onnx (the engine's source)"
    from deploykit.workflows.locate import locate_failure

    report = locate_failure(
        model,
        images,
        reference,
        candidate,
        fp32=config.fp32,
        tol=config.tolerances(precision),
        graph=graph,
        stage=stage,
    )
    if path.suffix in ENGINE_SUFFIXES and report.first is None:
        report.stage = "engine"
        report.note = (
            "the engine's source ONNX matches PyTorch module by module: the divergence comes from the "
            "TensorRT build (an engine exposes no intermediate tensors)"
            if graph is not None
            else "the engine's source ONNX is not beside it; an engine exposes no intermediate tensors"
        )
    return report
