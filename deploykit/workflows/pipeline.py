"""The export pipeline: :func:`run_export` runs :data:`~deploykit.workflows.stages.STAGES` over one
:class:`~deploykit.workflows.state.ExportState`.

Parity is re-checked after every transform, and the artifacts are published atomically: everything is
written into a staging directory first and only moved over the previous artifacts when every check passed.
A parity failure publishes nothing into the output directory; the rejected artifacts, the first diverging
module (``locate.json``) and ``report.html`` go to ``<out>/rejected/`` instead
(:mod:`deploykit.workflows.publish`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import click
from torch import nn

from deploykit.core.config import ExportConfig, default_config, resolve_config
from deploykit.core.errors import ConfigError
from deploykit.core.interrupts import reraise_if_interrupted
from deploykit.core.io import ensure_writable_dir, staging_dir
from deploykit.models import get_preset
from deploykit.workflows.int8 import Int8Options
from deploykit.workflows.model import PreparedModel, family_of, from_memory, prepare_model
from deploykit.workflows.publish import reject
from deploykit.workflows.stages import STAGES
from deploykit.workflows.state import REPORT_NAME, ExportResult, ExportState, Progress, _silent

__all__ = ["STAGES", "ExportResult", "export", "export_command", "run_export"]


def run_export(
    model: str | nn.Module,
    out_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    *,
    weights: str | Path | None = None,
    labels: str | Path | Sequence[str] | None = None,
    inputs_dir: str | Path | None = None,
    progress: Progress = _silent,
    fp16: bool = False,
    fp16_io: bool = False,
    engine: bool = False,
    timing_cache: str | Path | None = None,
    weights_format: str | None = None,
    int8: bool | Int8Options = False,
) -> ExportResult:
    """Export ``model`` — a preset name (optionally with ``weights``) or an ``nn.Module`` of one of the
    five families held in memory — to ``<out_dir>/model.onnx`` (+ ``model.fp16.onnx`` with ``fp16``),
    ``manifest.json`` and ``report.html``; with ``engine``, build (or script) the TensorRT engine. Runs
    :data:`STAGES` over one :class:`ExportState`. Raises ParityError if parity fails (nothing is published
    then; see the module doc); a bad model, checkpoint, flag or label file fails before anything is
    written."""
    int8 = Int8Options() if int8 is True else (int8 or None)
    fp16 = fp16 or int8 is not None  # the Q/DQ graph is built on the FP16 graph
    prepared, config = _prepare(model, config, weights=weights, weights_format=weights_format, labels=labels)
    spec = prepared.spec
    out = Path(out_dir) if out_dir is not None else Path("deploykit_out") / spec.name
    created = not out.exists()
    ensure_writable_dir(out)
    state = ExportState(
        spec=spec,
        config=config,
        out=out,
        weights=weights,
        weights_format=weights_format,
        labels=labels,
        inputs_dir=inputs_dir,
        fp16=fp16,
        fp16_io=fp16_io,
        engine=engine,
        timing_cache=timing_cache,
        prepared=prepared,
        int8=int8,
    )
    try:
        _run_stages(state, progress)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing was published: leave no empty folder behind
        raise
    sizes = ", ".join(f"{n} ({len(d) / 1e6:.1f} MB)" for n, d in state.artifacts.items())
    progress("done", f"{out}: {sizes}, manifest.json, {REPORT_NAME}")
    return ExportResult(out, out / "model.onnx", out / "manifest.json", state.manifest, state.parity)


def _prepare(model, config, *, weights, weights_format, labels) -> tuple[PreparedModel, ExportConfig]:
    if isinstance(model, str):
        spec = get_preset(model)
        config = config or default_config(spec.family)
        prepared = prepare_model(
            spec.name, config=config, weights=weights, weights_format=weights_format, labels=labels
        )
        return prepared, config
    if weights is not None:
        raise ConfigError("weights= goes with a preset name; a model in memory brings its own weights")
    config = config or default_config(family_of(model))
    return from_memory(model, config, labels=labels), config


def _run_stages(state: ExportState, progress: Progress) -> None:
    t0 = time.perf_counter()
    with staging_dir(state.out) as staging:
        state.staging = staging
        try:
            for stage in STAGES:
                if not stage.enabled(state):
                    continue
                if stage.needs_parity and state.failed():
                    reject(state)
                progress(stage.name, stage.describe(state))
                stage.run(state)
                reraise_if_interrupted()  # a stage that swallowed an interrupt publishes nothing
                state.timings[stage.name] = round(time.perf_counter() - t0 - sum(state.timings.values()), 3)
        finally:
            state.end_background()


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
    preprocessing: dict | None = None,
    inputs_dir: str | Path | None = None,
    engine: bool = False,
    progress: Progress | None = None,
    int8: bool = False,
    calib: str | Path | None = None,
    calib_count: int | None = None,
    calib_method: str = "entropy",
) -> ExportResult:
    """``deploykit.export``: the Python entry point of ``deploykit export``, for a preset name (with
    ``weights``) or a model held in memory (an ``nn.Module`` of one of the five families, e.g. built with
    :func:`deploykit.models.create_model` and trained). The same stages run — rewrites, parity after every
    transform, FP16, lint, manifest, atomic publish — and for the same weights the CLI writes the same
    ``model.onnx`` bytes. ``config``: an export TOML (path) or an :class:`ExportConfig`; ``image_size``,
    ``num_classes`` and ``preprocessing`` (crop_pct, mean, std, interpolation) override it. ``int8``
    also writes ``model.int8.onnx`` (TensorRT Q/DQ) and ``model.int8.cpu.onnx``, calibrated on ``calib``
    (a folder of images or an ImageFolder; default: the bundled images) with ``calib_method``."""
    family = family_of(model)
    options = _int8_options(int8, calib, calib_count, calib_method)
    base = config if isinstance(config, ExportConfig) else resolve_config(family, config)
    resolved = _override(base, image_size=image_size, num_classes=num_classes, preprocessing=preprocessing)
    return run_export(
        model,
        out_dir,
        resolved,
        weights=weights,
        weights_format=weights_format,
        labels=labels,
        inputs_dir=inputs_dir,
        progress=progress or _silent,
        fp16=fp16,
        fp16_io=fp16_io,
        engine=engine,
        int8=options or False,
    )


def _int8_options(int8: bool, calib, calib_count: int | None, calib_method: str | None) -> Int8Options | None:
    """The INT8 options, or ``None`` without ``int8``; the calibration flags need it."""
    if not int8:
        given = [flag for flag, v in (("--calib", calib), ("--calib-count", calib_count)) if v is not None]
        if given:
            raise ConfigError(f"{given[0]} needs --int8")
        return None
    return Int8Options(
        calib=str(calib) if calib is not None else None,
        calib_count=calib_count,
        calib_method=calib_method or "entropy",
    )


def _override(config: ExportConfig, **changes) -> ExportConfig:
    preprocessing = changes.pop("preprocessing") or {}
    kept = {k: v for k, v in changes.items() if v is not None}
    if preprocessing:
        kept["preprocessing"] = {**config.preprocessing, **preprocessing}
    return dataclasses.replace(config, **kept) if kept else config


def _floats(name: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated numbers, got {text!r}") from None


def _preprocessing_flags(**flags: object) -> dict:
    """The preprocessing flags given (the config's values stay for the others)."""
    flags["mean"] = _floats("--mean", flags["mean"])
    flags["std"] = _floats("--std", flags["std"])
    return {k: v for k, v in flags.items() if v is not None}


class StderrProgress:
    """Per-stage progress lines on stderr, with the time since the start (``quiet``: none)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, message: str) -> None:
        if not self.quiet:
            click.echo(f"[{time.perf_counter() - self.t0:6.1f}s] {stage:<14} {message}", err=True)


def export_command(
    model: str,
    *,
    config_path: str | None = None,
    out_dir: str | None = None,
    opset: int | None = None,
    batch: str | None = None,
    weights: str | None = None,
    weights_format: str | None = None,
    exporter: str | None = None,
    no_simplify: bool = False,
    inputs_dir: str | None = None,
    fp16: bool = False,
    fp16_io: bool = False,
    no_engine: bool = False,
    timing_cache: str | None = None,
    quiet: bool = False,
    image_size: int | None = None,
    num_classes: int | None = None,
    labels: str | None = None,
    crop_pct: float | None = None,
    mean: str | None = None,
    std: str | None = None,
    interpolation: str | None = None,
    int8: bool = False,
    calib: str | None = None,
    calib_count: int | None = None,
    calib_method: str | None = None,
) -> ExportResult:
    """``deploykit export``: resolve the preset and config, run the pipeline, print what was written
    (``mean``/``std``: comma-separated per-channel values, as on the command line)."""
    preprocessing = _preprocessing_flags(crop_pct=crop_pct, mean=mean, std=std, interpolation=interpolation)
    preset = get_preset(model)
    config = resolve_config(
        preset.family,
        config_path,
        opset=opset,
        batch=batch,
        exporter=exporter,
        simplify=False if no_simplify else None,
        image_size=image_size,
        num_classes=num_classes,
        labels=labels,
        preprocessing=preprocessing,
    )
    if fp16_io and not (fp16 or int8):
        raise ConfigError("--fp16-io needs --fp16")
    options = _int8_options(int8, calib, calib_count, calib_method)
    result = run_export(
        preset.name,
        out_dir,
        config,
        weights=weights,
        inputs_dir=inputs_dir,
        progress=StderrProgress(quiet),
        fp16=fp16,
        fp16_io=fp16_io,
        engine=not no_engine,
        timing_cache=timing_cache,
        weights_format=weights_format,
        int8=options or False,
    )
    for line in summary_lines(result, preset.name, fp16=fp16 or int8):
        click.echo(line)
    return result


def summary_lines(result: ExportResult, preset: str, *, fp16: bool) -> list[str]:
    """What ``deploykit export`` prints when it is done: the FP32 file, the FP16 file, the engine."""
    final = result.parity["dynamic batch"]
    lint = result.manifest["lint"]
    lines = [
        f"exported {preset} -> {result.onnx_path}  "
        f"(max abs logit error {final.worst_metric('max_abs'):.2e}, top-1 agreement "
        f"{final.worst_metric('top1'):.0%}, lint violations {len(lint['violations'])})"
    ]
    model = result.manifest["model"]
    args = model["model_args"]
    head = f"{args['num_classes']} classes" if args["num_classes"] else "no head: outputs features"
    named = " (named)" if result.manifest.get("labels") else ""
    lines.append(f"model: {args['image_size']}x{args['image_size']} input, {head}{named}")
    if fp16:
        half = result.parity["fp16"]
        info = result.manifest["fp16"]
        lines.append(
            f"fp16 -> {result.out_dir / 'model.fp16.onnx'}  (cosine min {half.worst_metric('cosine_min'):.6f}, "
            f"top-1 {half.worst_metric('top1'):.1%} ({half.worst_metric('top1_decisive'):.1%} counting "
            f"near-ties as agreement), max abs {half.worst_metric('max_abs'):.2e} on {info['images']} images; "
            f"{info['size_ratio']:.2f}x the fp32 file; {len(info['kept_fp32'])} nodes kept FP32; "
            f"lint violations {len(info['lint']['violations'])})"
        )
    if "int8" in result.manifest:
        lines.extend(_int8_lines(result))
    engine = result.manifest["engine"]
    if engine["status"].startswith("skipped"):
        lines.append(
            f"engine: {engine['status']}; run {result.out_dir / engine['script']} on the target GPU "
            "(trtexec of TensorRT 10.3+ or 11.x) to build it there"
        )
    elif engine["status"] == "built":
        lines.append(f"engine -> {result.out_dir / 'model.engine'} ({engine.get('precision', '')})")
    if result.manifest.get("random_weights"):
        lines.append(
            "weights: RANDOM (no --weights given): the export is checked, but its classes mean nothing; "
            "export with --weights CHECKPOINT for a model that predicts"
        )
    return lines


def _int8_lines(result: ExportResult) -> list[str]:
    info = result.manifest["int8"]
    accuracy = info.get("accuracy") or {}
    lines = []
    for key, name, part in (
        ("int8", "model.int8.onnx", "tensorrt"),
        ("int8-cpu", "model.int8.cpu.onnx", "cpu"),
    ):
        parity = result.parity[key]
        kept = info[part]["kept_blocks"]
        acc = accuracy.get("int8" if key == "int8" else "int8_cpu")
        shown = f", accuracy {acc:.1%} (FP32 {accuracy['fp32']:.1%})" if acc is not None else ""
        lines.append(
            f"{key} -> {result.out_dir / name}  (cosine min {parity.worst_metric('cosine_min'):.4f}, top-1 "
            f"{parity.worst_metric('top1'):.1%} ({parity.worst_metric('top1_decisive'):.1%} counting near-ties)"
            f"{shown}; {info[part]['size_ratio']:.2f}x the fp32 file"
            + (f"; kept in higher precision: {', '.join(k['block'] for k in kept)}" if kept else "")
            + ")"
        )
    cal = info["calibration"]
    lines.append(f"int8 calibration: {cal['method']} on {cal['source']}")
    return lines
