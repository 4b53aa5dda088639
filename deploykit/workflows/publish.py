"""Publishing an export: the ONNX files with their metadata, the engine stage, ``manifest.json`` and
``report.html`` moved into place atomically, or, when parity failed, everything moved to ``rejected/``
with the first diverging module (``locate.json``)."""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import deploykit
from deploykit.core.errors import ParityError
from deploykit.core.io import atomic_write_bytes, atomic_write_text, sha256_bytes
from deploykit.core.onnx_io import io_signature, serialize, set_metadata
from deploykit.transforms.onnx_export import INPUT_NAME
from deploykit.transforms.simplify import SimplifyResult
from deploykit.validation.metrics import per_sample
from deploykit.validation.reference import REFERENCE_NAME, pixels_u8, reference_bytes
from deploykit.workflows.model import model_record
from deploykit.workflows.state import REPORT_NAME, ExportState


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def versions() -> dict[str, str]:
    import onnxruntime

    out = {
        "deploykit": deploykit.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    for mod in ("onnxsim", "onnxslim", "onnxscript"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # optional
            out[mod] = "not installed"
    return out


def stage_engine(state: ExportState) -> None:
    """The TensorRT engine of the published graph (build_engine.sh where TensorRT or a GPU is missing)."""
    from deploykit.workflows.build import build_or_script, export_engine_info

    _artifacts(state)  # the engine is built from the staged file
    source = "model.fp16.onnx" if state.fp16 else "model.onnx"
    int8 = state.staging / "model.int8.onnx"  # built too, strongly typed (explicit Q/DQ needs no calibrator)
    outcome = build_or_script(
        state.staging / source,
        engine_path=state.staging / "model.engine",
        config=state.config,
        timing_cache=Path(state.timing_cache) if state.timing_cache else None,
        script_cache_name="timing.cache",
        input_name=INPUT_NAME,
        input_chw=state.input_size,
        expect_fp16=state.fp16,
        extra_builds=[(int8, state.staging / "model.int8.engine")] if int8.is_file() else [],
    )
    state.engine_info = export_engine_info(outcome, source)


#: what any export may write beside its manifest (a previous export's files go when the new one lacks them)
DEPLOYKIT_FILES = (
    "model.onnx",
    "model.fp16.onnx",
    "model.int8.onnx",
    "model.int8.cpu.onnx",
    "model.engine",
    "model.engine.json",
    "model.int8.engine",
    "model.int8.engine.json",
    "build_engine.sh",
    REFERENCE_NAME,
    REPORT_NAME,
    "locate.json",
)


def stage_manifest(state: ExportState) -> None:
    """manifest.json and report.html beside the artifacts, then everything moved into place; what an
    earlier export wrote and this one did not (an old ``model.fp16.onnx``, ``rejected/``) goes, so the
    folder holds exactly what the new manifest lists (and files deploykit did not write)."""
    _write_manifest(state)
    earlier = _published_files(state.out)
    published = [*state.manifest["artifacts"], REPORT_NAME, "manifest.json"]
    # models first, manifest last: a published manifest never describes a missing file
    for name in published:
        (state.staging / name).replace(state.out / name)
    for name in sorted(earlier - set(published)):
        (state.out / name).unlink(missing_ok=True)
    shutil.rmtree(state.out / "rejected", ignore_errors=True)


def _published_files(out: Path) -> set[str]:
    """The files a previous export published in ``out``: its manifest's artifacts, and deploykit's names."""
    try:
        listed = set(json.loads((out / "manifest.json").read_text(encoding="utf-8"))["artifacts"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    names = {n for n in listed if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")}
    return {n for n in names | set(DEPLOYKIT_FILES) if (out / n).is_file()}


#: INT8 images (from the calibration folder) the golden reference keeps besides the validation images
REFERENCE_INT8_IMAGES = 16


def _finish(state: ExportState, graph: onnx.ModelProto, precision: str, lint_count: int) -> bytes:
    """The graph with deploykit's metadata, serialized."""
    result = state.parity[precision if precision in ("fp16", "int8", "int8-cpu") else "dynamic batch"]
    meta = {
        "deploykit.version": deploykit.__version__,
        "deploykit.preset": state.spec.name,
        "deploykit.family": state.spec.family,
        "deploykit.input": json.dumps({"name": INPUT_NAME, "shape": ["batch", *state.input_size]}),
        "deploykit.preprocessing": json.dumps(_jsonable(vars(state.model.data_config))),
        "deploykit.rewrites": ",".join(r.name for r in state.records),
        "deploykit.opset": str(state.config.opset),
        "deploykit.exporter": state.config.exporter,
        "deploykit.torch": torch.__version__,
    }
    record = model_record(state.prepared)
    meta["deploykit.model_args"] = json.dumps(record["model_args"], sort_keys=True)
    if record["weights_state_sha256"] is not None:
        meta["deploykit.weights_state_sha256"] = record["weights_state_sha256"]
    if state.prepared.labels is not None:
        meta["deploykit.labels"] = json.dumps(list(state.prepared.labels))
    meta["deploykit.precision"] = precision
    meta["deploykit.parity"] = json.dumps(
        {
            "max_abs": result.worst_metric("max_abs"),
            "cosine_min": result.worst_metric("cosine_min"),
            "top1": result.worst_metric("top1"),
            "passed": result.passed,
        }
    )
    meta["deploykit.lint_violations"] = str(lint_count)
    meta["deploykit.reference_sha256"] = state.reference_info["sha256"]
    set_metadata(graph, meta)
    return serialize(graph)


def _artifacts(state: ExportState) -> dict[str, bytes]:
    """The ONNX files with their metadata, serialized and staged once."""
    if not state.artifacts:
        golden = _golden_reference(state)  # first: every ONNX file records its sha256
        state.artifacts["model.onnx"] = _finish(state, state.proto, "fp32", len(state.lint.violations))
        if state.fp16_proto is not None:
            lint = len(state.fp16_info["lint"]["violations"])
            data = _finish(state, state.fp16_proto, "fp16", lint)
            state.artifacts["model.fp16.onnx"] = data
            state.fp16_info["size_ratio"] = round(len(data) / len(state.artifacts["model.onnx"]), 4)
        if state.int8_proto is not None:
            lint = len(state.int8_info["tensorrt"]["lint"]["violations"])
            state.artifacts["model.int8.onnx"] = _finish(state, state.int8_proto, "int8", lint)
            state.artifacts["model.int8.cpu.onnx"] = _finish(state, state.int8_cpu_proto, "int8-cpu", 0)
            fp32 = len(state.artifacts["model.onnx"])
            for key, name in (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8.cpu.onnx")):
                state.int8_info[key]["size_ratio"] = round(len(state.artifacts[name]) / fp32, 4)
        state.artifacts[REFERENCE_NAME] = golden
        for name, data in state.artifacts.items():
            atomic_write_bytes(state.staging / name, data)
    return state.artifacts


def _golden_reference(state: ExportState) -> bytes:
    """``reference.npz`` (:mod:`deploykit.validation.reference`): the FP32 validation images as uint8 after
    resize and crop with their PyTorch FP32 outputs (and, for INT8 with a calibration folder, up to
    :data:`REFERENCE_INT8_IMAGES` of its images), the tolerances per precision and the model's identity."""
    from deploykit.runtime.base import run_batched
    from deploykit.runtime.preprocess import Preprocessing
    from deploykit.runtime.torch_runner import TorchRunner

    data_config = _jsonable(vars(state.model.data_config))
    pre = Preprocessing.from_dict(data_config)
    pixels = pixels_u8(state.images, pre)
    outputs = state.reference
    stored = pre.normalize(pixels.astype(np.float32) / 255.0)
    if not np.array_equal(stored, state.images):
        # images that are not whole uint8 steps (none today): the reference is computed on what is stored
        outputs = run_batched(TorchRunner(state.model), stored, state.config.batch.max)
    int8 = None
    if state.calibration is not None and state.int8_images is not None:
        n = REFERENCE_INT8_IMAGES
        int8 = (pixels_u8(state.int8_images[:n], pre), state.int8_reference[:n])
    record = model_record(state.prepared)
    identity = {
        "preset": state.spec.name,
        "family": state.spec.family,
        "model_args": record["model_args"],
        "weights_state_sha256": record["weights_state_sha256"],
        "random_weights": state.prepared.random_weights,
        "input": {"name": INPUT_NAME, "shape": ["batch", *state.input_size]},
        "preprocessing": data_config,
    }
    tolerances = {p: dataclasses.asdict(state.config.tolerances(p)) for p in ("fp32", "fp16", "int8")}
    data = reference_bytes(
        pixels, outputs, tolerances=tolerances, identity=identity, names=list(state.batch.names), int8=int8
    )
    state.reference_info = {
        "file": REFERENCE_NAME,
        "sha256": sha256_bytes(data),
        "bytes": len(data),
        "images": len(pixels),
        "int8_images": 0 if int8 is None else len(int8[0]),
    }
    return data


def _manifest(state: ExportState) -> dict[str, Any]:
    config, model = state.config, state.model
    artifacts = {name: {"sha256": sha256_bytes(d), "bytes": len(d)} for name, d in _artifacts(state).items()}
    for name in [state.engine_info.get("script"), *state.engine_info.get("files", [])]:
        if name:
            data = (state.staging / name).read_bytes()
            artifacts[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    manifest = {
        "preset": state.spec.name,
        "family": state.spec.family,
        "model_config": _jsonable(dict(state.spec.kwargs) | state.prepared.model_args),
        "preprocessing": _jsonable(vars(model.data_config)),
        "export_config": _jsonable(config.to_dict()),
        "versions": versions(),
        "opset": config.opset,
        "exporter": config.exporter,
        "exporter_notes": state.exporter_notes,
        "trace_cache": state.trace_cache.to_dict() if state.trace_cache else None,
        "weights": state.weights_info.to_dict() if state.weights_info else None,
        "model": {
            **model_record(state.prepared),
            "inferred": state.prepared.inferred.to_dict() if state.prepared.inferred else None,
        },
        "random_weights": state.prepared.random_weights,
        "labels": list(state.prepared.labels) if state.prepared.labels is not None else None,
        "rewrites": [r.to_dict() for r in state.records],
        "io": io_signature(state.proto),
        "nodes": {"exported": len(state.exported.graph.node), "final": len(state.proto.graph.node)},
        "simplify": (state.simplify or _not_simplified(state.proto)).to_dict(),
        "validation_inputs": {
            "count": len(state.images),
            "names": list(state.batch.names),
            "source": str(state.inputs_dir) if state.inputs_dir else "built-in",
        },
        "parity": {name: p.to_dict() for name, p in state.parity.items()},
        "per_image": {k: per_sample(state.references[k], c) for k, c in state.candidates.items()},
        "lint": state.lint.to_dict(),
        **({"fp16": state.fp16_info} if state.fp16_proto is not None else {}),
        **({"int8": state.int8_info} if state.int8_proto is not None else {}),
        "engine": state.engine_info,
        "reference": state.reference_info,
        "artifacts": artifacts,
        "timings_s": state.timings,
        "background": {k: {"seconds": job.seconds, "ran": job.where} for k, job in state.jobs.items()},
        "passed": state.failed() is None,
    }
    if state.locate is not None:
        manifest["first_divergence"] = state.locate.first.to_dict() if state.locate.first else None
        manifest["locate"] = state.locate.to_dict()
    return manifest


def _not_simplified(proto: onnx.ModelProto) -> SimplifyResult:
    return SimplifyResult("none", len(proto.graph.node), len(proto.graph.node), ("--no-simplify",))


def _write_manifest(state: ExportState) -> None:
    from deploykit.workflows.report import render_report

    state.manifest = _manifest(state)
    atomic_write_text(state.staging / "manifest.json", json.dumps(state.manifest, indent=2) + "\n")
    atomic_write_text(state.staging / REPORT_NAME, render_report(state.manifest))


def reject(state: ExportState) -> None:
    """Parity failed: find the first diverging module, move everything to ``rejected/``, raise."""
    from deploykit.workflows.locate import locate_failure

    key = state.failed()
    result = state.parity[key]
    images = {"fp16": state.fp16_images, "int8": state.int8_images, "int8-cpu": state.int8_images}.get(
        key, state.images
    )
    if len(state.candidates[key]) == len(images):  # not "dynamic batch": its rows repeat images
        tol = state.config.tolerances(key if key in ("fp16", "int8", "int8-cpu") else "fp32")
        state.locate = locate_failure(
            state.model,
            images,
            state.references[key],
            state.candidates[key],
            state.config.fp32,
            tol,
            state.graphs[key],
            key,
            rewritten=state.rewritten,
        )
    state.end_background()
    _write_manifest(state)
    if state.locate is not None:
        atomic_write_text(state.staging / "locate.json", json.dumps(state.locate.to_dict(), indent=2) + "\n")
    rejected = state.out / "rejected"
    shutil.rmtree(rejected, ignore_errors=True)
    state.staging.rename(rejected)
    state.staging.mkdir()  # staging_dir removes it on exit
    fail = result.worst()
    where = f"; {state.locate.describe()}" if state.locate is not None and state.locate.first else ""
    raise ParityError(
        f"parity failed at stage {result.stage!r}: {fail.describe() if fail else 'see manifest'}{where}; "
        f"nothing was published, rejected artifacts are in {rejected}"
    )
