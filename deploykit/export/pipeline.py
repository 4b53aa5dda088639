"""The export pipeline: build -> rewrite -> ONNX -> simplify -> validate -> lint -> manifest.

Each stage is a plain function (see the stage modules); :func:`run_export` chains them, re-checks parity
after every graph transform, and publishes the artifacts atomically: everything is written into a staging
directory first and only moved over the previous artifacts when every stage passed. A parity failure
publishes nothing into the output directory; the rejected artifacts go to ``<out>/rejected/`` instead.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import deploykit
from deploykit.errors import ExportError, ParityError
from deploykit.export.config import ExportConfig, default_config
from deploykit.export.io import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    io_signature,
    sha256_bytes,
    staging_dir,
)
from deploykit.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, serialize, set_metadata
from deploykit.export.rewrites import apply_rewrites
from deploykit.export.simplify import SimplifyResult, simplify_onnx
from deploykit.models import create_model, get_preset, load_pretrained
from deploykit.models.weights import WeightsInfo
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.validation import ParityResult, compare_outputs, validation_batch

Progress = Callable[[str, str], None]


def _silent(stage: str, message: str) -> None:
    pass


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- stages
def build_model(
    preset: str,
    image_size: int | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    weights_format: str | None = None,
) -> tuple[nn.Module, WeightsInfo | None]:
    """Stage 1: the registered preset in eval mode, built with a fixed seed, optionally with weights
    (a reference checkpoint or a deploykit state_dict, see :func:`deploykit.models.load_pretrained`)."""
    torch.manual_seed(seed)
    overrides = {"image_size": image_size} if image_size is not None else {}
    model = create_model(preset, **overrides).eval()
    info = load_pretrained(model, weights, weights_format)[1] if weights is not None else None
    return model.eval(), info


def check_parity(stage: str, reference: np.ndarray, candidate: np.ndarray, tolerances) -> ParityResult:
    return compare_outputs({OUTPUT_NAME: reference}, {OUTPUT_NAME: candidate}, tolerances, stage=stage)


def dynamic_batch_parity(
    runner: OrtRunner, images: np.ndarray, reference: np.ndarray, sizes: list[int], tolerances
) -> ParityResult:
    """The same file at several batch sizes: each chunk's logits against the fp32 reference."""
    outs = [run_batched(runner, images[:n], n) for n in sizes]
    cand = np.concatenate(outs)
    ref = np.concatenate([reference[:n] for n in sizes])
    return check_parity(f"batch sizes {','.join(map(str, sizes))}", ref, cand, tolerances)


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


# ------------------------------------------------------------------------------------------- pipeline
def run_export(
    preset: str,
    out_dir: str | Path | None = None,
    config: ExportConfig | None = None,
    weights: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    progress: Progress = _silent,
    fp16: bool = False,
    fp16_io: bool = False,
    engine: bool = False,
    timing_cache: str | Path | None = None,
    weights_format: str | None = None,
) -> ExportResult:
    """Export ``preset`` to ``<out_dir>/model.onnx`` (+ ``model.fp16.onnx`` with ``fp16``) and
    ``manifest.json``; with ``engine``, build (or script) the TensorRT engine. Raise ParityError if parity
    fails (nothing is published then)."""
    from deploykit.export.lint import lint_model

    spec = get_preset(preset)
    config = config or default_config(spec.family)
    out = ensure_writable_dir(Path(out_dir) if out_dir is not None else Path("deploykit_out") / spec.name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def mark(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - t0 - sum(timings.values()), 3)

    progress("build", f"{spec.name} ({spec.family})" + (f" with weights {weights}" if weights else ""))
    model, weights_info = build_model(spec.name, config.image_size, weights, config.seed, weights_format)
    input_size = tuple(model.input_size)
    batch = validation_batch(model.data_config, config.num_images, config.seed, inputs_dir)
    images = batch.images
    max_batch = config.batch.max
    reference = run_batched(TorchRunner(model), images, max_batch)
    tol = config.tolerances("fp32")
    mark("build")

    progress("rewrite", "export-friendly module swaps")
    rewritten, records = apply_rewrites(model)
    parity = {
        "rewrites": check_parity(
            "rewrites (torch)", reference, run_batched(TorchRunner(rewritten), images, max_batch), tol
        )
    }
    mark("rewrite")

    progress("onnx", f"{config.exporter} exporter, opset {config.opset}")
    exporter_notes: list[str] = []
    try:
        proto = export_onnx(rewritten, input_size, config.opset, config.exporter, max_batch)
    except ExportError as exc:
        if config.exporter != "dynamo":
            raise
        # the documented fallback: the TorchScript exporter, recorded in the manifest
        exporter_notes.append(f"dynamo failed ({exc}); fell back to torchscript")
        progress("onnx", "dynamo failed; falling back to the torchscript exporter")
        config = dataclasses.replace(config, exporter="torchscript")
        proto = export_onnx(rewritten, input_size, config.opset, config.exporter, max_batch)
    nodes_exported = len(proto.graph.node)
    parity["onnx"] = check_parity(
        "onnx (onnxruntime)", reference, run_batched(OrtRunner(serialize(proto)), images, max_batch), tol
    )
    mark("onnx")

    if config.simplify:
        progress("simplify", "onnxsim (fallback onnxslim)")
        simplified, simp = simplify_onnx(proto)
        parity["simplified"] = check_parity(
            "simplified (onnxruntime)",
            reference,
            run_batched(OrtRunner(serialize(simplified)), images, max_batch),
            tol,
        )
        if not parity["simplified"].passed and simp.tool != "none":
            # a simplifier that changes the numbers is not trusted: keep the exported graph
            simp = SimplifyResult(
                "none",
                simp.nodes_before,
                simp.nodes_before,
                simp.notes + (f"{simp.tool} output failed parity; kept the exported graph",),
            )
            simplified = proto
        proto = simplified
    else:
        simp = SimplifyResult("none", len(proto.graph.node), len(proto.graph.node), ("--no-simplify",))
    mark("simplify")

    progress("validate", f"{len(images)} images, batch sizes through one file")
    runner = OrtRunner(serialize(proto))
    sizes = sorted(
        {s for s in (config.batch.min, 1, 3, 8, config.batch.opt) if s <= min(max_batch, len(images))}
    )
    parity["dynamic batch"] = dynamic_batch_parity(runner, images, reference, sizes, tol)
    final = parity["dynamic batch"]
    mark("validate")

    progress("lint", "TensorRT ONNX-parser operator support")
    lint = lint_model(proto)
    mark("lint")

    artifacts: dict[str, bytes] = {}
    manifest_extra: dict[str, Any] = {}
    if fp16:
        progress("fp16", "mixed-precision graph with FP32 islands, sensitivity check")
        fp16_proto, fp16_info = _fp16_stage(model, proto, config, inputs_dir, lint_model, fp16_io)
        parity["fp16"] = fp16_info.pop("parity")
        manifest_extra["fp16"] = fp16_info
        mark("fp16")

    worst = next((p for p in parity.values() if not p.passed), None)
    base_meta = {
        "deploykit.version": deploykit.__version__,
        "deploykit.preset": spec.name,
        "deploykit.family": spec.family,
        "deploykit.input": json.dumps({"name": INPUT_NAME, "shape": ["batch", *input_size]}),
        "deploykit.preprocessing": json.dumps(_jsonable(vars(model.data_config))),
        "deploykit.rewrites": ",".join(r.name for r in records),
        "deploykit.opset": str(config.opset),
        "deploykit.exporter": config.exporter,
        "deploykit.torch": torch.__version__,
    }
    if weights_info is not None:
        base_meta["deploykit.weights_sha256"] = weights_info.sha256

    def finish(graph: onnx.ModelProto, precision: str, result: ParityResult, lint_count: int) -> bytes:
        meta = dict(base_meta)
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
        set_metadata(graph, meta)
        return serialize(graph)

    artifacts["model.onnx"] = finish(proto, "fp32", final, len(lint.violations))
    if fp16:
        artifacts["model.fp16.onnx"] = finish(
            fp16_proto, "fp16", parity["fp16"], len(manifest_extra["fp16"]["lint"]["violations"])
        )
        manifest_extra["fp16"]["size_ratio"] = round(
            len(artifacts["model.fp16.onnx"]) / len(artifacts["model.onnx"]), 4
        )

    manifest = {
        "preset": spec.name,
        "family": spec.family,
        "model_config": _jsonable(
            dict(spec.kwargs) | ({"image_size": config.image_size} if config.image_size else {})
        ),
        "preprocessing": _jsonable(vars(model.data_config)),
        "export_config": _jsonable(config.to_dict()),
        "versions": versions(),
        "opset": config.opset,
        "exporter": config.exporter,
        "exporter_notes": exporter_notes,
        "weights": weights_info.to_dict() if weights_info else None,
        "rewrites": [r.to_dict() for r in records],
        "io": io_signature(proto),
        "nodes": {"exported": nodes_exported, "final": len(proto.graph.node)},
        "simplify": simp.to_dict(),
        "validation_inputs": {
            "count": len(images),
            "names": list(batch.names),
            "source": str(inputs_dir) if inputs_dir else "built-in",
        },
        "parity": {name: p.to_dict() for name, p in parity.items()},
        "lint": lint.to_dict(),
        **manifest_extra,
        "engine": {"status": "not requested"},
        "artifacts": {},
        "timings_s": timings,
        "passed": worst is None,
    }

    with staging_dir(out) as stage:
        for name, data in artifacts.items():
            atomic_write_bytes(stage / name, data)
            manifest["artifacts"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        if worst is not None:
            atomic_write_text(stage / "manifest.json", json.dumps(manifest, indent=2) + "\n")
            rejected = out / "rejected"
            shutil.rmtree(rejected, ignore_errors=True)
            stage.rename(rejected)
            stage.mkdir()  # staging_dir removes it on exit
            fail = worst.worst()
            raise ParityError(
                f"parity failed at stage {worst.stage!r}: {fail.describe() if fail else 'see manifest'}; "
                f"nothing was published, rejected artifacts are in {rejected}"
            )
        if engine:
            progress("engine", "TensorRT strongly typed build")
            source = "model.fp16.onnx" if fp16 else "model.onnx"
            manifest["engine"] = _engine_stage(
                stage, source, input_size, config, timing_cache, expect_fp16=fp16
            )
            for name in [manifest["engine"].get("script"), *manifest["engine"].get("files", [])]:
                if name:
                    data = (stage / name).read_bytes()
                    manifest["artifacts"][name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
        mark("engine")
        atomic_write_text(stage / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        # models first, manifest last: a published manifest never describes a missing file
        for name in [*manifest["artifacts"], "manifest.json"]:
            (stage / name).replace(out / name)
    mark("publish")
    sizes = ", ".join(f"{n} ({len(d) / 1e6:.1f} MB)" for n, d in artifacts.items())
    progress("done", f"{out}: {sizes}, manifest.json")
    return ExportResult(out, out / "model.onnx", out / "manifest.json", manifest, parity)


def _fp16_stage(model, proto, config, inputs_dir, lint_model, fp16_io):
    """The FP16 graph, validated on >= 64 images against PyTorch FP32."""
    from deploykit.export.fp16 import make_fp16

    tol = config.tolerances("fp16")
    batch = validation_batch(model.data_config, max(64, config.num_images), config.seed, inputs_dir)
    reference = run_batched(TorchRunner(model), batch.images, config.batch.max)

    def passes(logits: np.ndarray) -> bool:
        return check_parity("fp16", reference, logits, tol).passed

    fp16_proto, report = make_fp16(proto, batch.images, reference, passes, fp16_io, config.batch.max)
    runner = OrtRunner(serialize(fp16_proto))
    result = check_parity(
        f"fp16 (onnxruntime, {len(batch)} images)",
        reference,
        run_batched(runner, batch.images, config.batch.max),
        tol,
    )
    lint = lint_model(fp16_proto)
    return fp16_proto, {
        "parity": result,
        "io": "fp16" if fp16_io else "fp32",
        "images": len(batch),
        "lint": lint.to_dict(),
        **report.to_dict(),
    }


def _engine_stage(
    stage: Path, source: str, input_size, config: ExportConfig, timing_cache, expect_fp16: bool
) -> dict:
    """Build the engine where TensorRT and a GPU exist; otherwise write build_engine.sh and say why."""
    from deploykit.engine.builder import build_engine, tensorrt_available
    from deploykit.engine.script import write_build_script

    ok, reason = tensorrt_available()
    if not ok:
        script = write_build_script(
            stage / source,
            config.batch,
            INPUT_NAME,
            tuple(input_size),
            config.workspace_mib,
            config.builder_optimization_level,
            "timing.cache",
            "model.engine",
            reason,
        )
        return {"status": f"skipped: {reason}", "script": script.name, "source": source}
    result = build_engine(
        stage / source,
        stage / "model.engine",
        config.batch,
        config.workspace_mib,
        config.builder_optimization_level,
        Path(timing_cache) if timing_cache else None,
        expect_fp16=expect_fp16,
    )
    return {
        "status": "built",
        "source": source,
        "files": [result.engine_path.name, result.sidecar_path.name],
        "fp16_layer_share": result.fp16_share,
        "build_seconds": result.build_seconds,
        "precision": result.sidecar.get("precision"),
        "sidecar": result.sidecar,
    }
