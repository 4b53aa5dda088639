"""The export pipeline: build -> rewrite -> onnx -> simplify -> validate -> lint -> fp16 -> engine ->
manifest (with ``fp16``, also fp16-reference after rewrite: it hands the FP16 check's images, their
PyTorch reference and the range screen to a background process, see :mod:`deploykit.workflows.background`).

Each stage is a plain function over one :class:`ExportState`; :data:`STAGES` lists them in order, and each
name is both its progress line and its key in the manifest (``timings_s``, ``parity``). :func:`run_export`
runs them. Parity is re-checked after every transform, and the artifacts are published atomically:
everything is written into a staging directory first and only moved over the previous artifacts when every
check passed. A parity failure publishes nothing into the output directory; the rejected artifacts, the
first diverging module (``locate.json``) and ``report.html`` go to ``<out>/rejected/`` instead.
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
from deploykit.core.config import ExportConfig, default_config
from deploykit.core.errors import ExportError, ParityError
from deploykit.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
    sha256_bytes,
    staging_dir,
)
from deploykit.core.onnx_io import io_signature, serialize, set_metadata
from deploykit.core.scopes import carry_scopes
from deploykit.models import create_model, get_preset, load_pretrained
from deploykit.models.weights import WeightsInfo
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms import rewrites
from deploykit.transforms.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from deploykit.transforms.simplify import SimplifyResult, simplify_onnx
from deploykit.validation import ParityResult, compare_outputs, validation_batch
from deploykit.validation.metrics import per_sample

Progress = Callable[[str, str], None]
REPORT_NAME = "report.html"
#: images of the FP16 check (at least); PyTorch runs once per image: the FP32 stages' rows are reused
FP16_IMAGES = 64
#: images the FP16 range check runs on (its PyTorch screen, and the ONNX measurement when the screen is
#: inconclusive: both read every activation, ~0.3 s an image for CvT-13 on one core)
RANGE_IMAGES = 8
#: batch size of the FP16 stage's bulk runs (ONNX Runtime ran the FP16 graph over 64 images on two cores in
#: 2.46 s at batch 2, 2.41 at 4, 2.53-2.66 at 8, 2.95 at 16 for CvT-13; 3.09 / 3.42 / 3.67 s at 2 / 4 / 8
#: for DeepViT-16B: small batches keep the activations in cache)
BULK_BATCH = 2


def _silent(stage: str, message: str) -> None:
    pass


@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    parity: dict[str, ParityResult] = field(default_factory=dict)


def build_model(
    preset: str,
    image_size: int | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    weights_format: str | None = None,
) -> tuple[nn.Module, WeightsInfo | None]:
    """The registered preset in eval mode, built with a fixed seed, optionally with weights (a reference
    checkpoint or a deploykit state_dict, see :func:`deploykit.models.load_pretrained`)."""
    torch.manual_seed(seed)
    overrides = {"image_size": image_size} if image_size is not None else {}
    model = create_model(preset, **overrides).eval()
    info = load_pretrained(model, weights, weights_format)[1] if weights is not None else None
    return model.eval(), info


def check_parity(stage: str, reference: np.ndarray, candidate: np.ndarray, tolerances) -> ParityResult:
    return compare_outputs({OUTPUT_NAME: reference}, {OUTPUT_NAME: candidate}, tolerances, stage=stage)


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


# --------------------------------------------------------------------------------------------- state
@dataclass
class ExportState:
    """The inputs of :func:`run_export` and what each stage produced, shared by the stages."""

    spec: Any  # the registry's PresetSpec
    config: ExportConfig
    out: Path
    weights: str | Path | None = None
    weights_format: str | None = None
    inputs_dir: str | Path | None = None
    fp16: bool = False
    fp16_io: bool = False
    engine: bool = False
    timing_cache: str | Path | None = None
    staging: Path | None = None
    # build
    model: nn.Module | None = None
    weights_info: WeightsInfo | None = None
    batch: Any = None  # ValidationBatch
    reference: np.ndarray | None = None
    # rewrite, onnx, simplify, lint
    rewritten: nn.Module | None = None
    records: list = field(default_factory=list)
    exporter_notes: list[str] = field(default_factory=list)
    exported: onnx.ModelProto | None = None
    proto: onnx.ModelProto | None = None  # the FP32 graph as it stands
    simplify: SimplifyResult | None = None
    lint: Any = None
    # fp16
    fp16_proto: onnx.ModelProto | None = None
    fp16_info: dict[str, Any] = field(default_factory=dict)
    worker: Any = None  # the background process (deploykit.workflows.background.Worker)
    jobs: dict[str, Any] = field(default_factory=dict)  # its jobs: "inputs", "screen"
    fp16_images: np.ndarray | None = None
    fp16_rows: list[int | None] = field(default_factory=list)  # row of each FP16 image in images, or None
    fp16_reference: np.ndarray | None = None
    # per check (key): the parity result, its reference and candidate logits, and the graph that ran
    parity: dict[str, ParityResult] = field(default_factory=dict)
    references: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: dict[str, np.ndarray] = field(default_factory=dict)
    graphs: dict[str, onnx.ModelProto | None] = field(default_factory=dict)
    locate: Any = None  # LocateReport of a rejected export
    # engine, manifest
    artifacts: dict[str, bytes] = field(default_factory=dict)
    engine_info: dict[str, Any] = field(default_factory=lambda: {"status": "not requested"})
    manifest: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> np.ndarray:
        return self.batch.images

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.model.input_size)

    def check(
        self,
        key: str,
        label: str,
        candidate: np.ndarray,
        graph: onnx.ModelProto | None,
        reference: np.ndarray | None = None,
        precision: str = "fp32",
    ) -> ParityResult:
        """Parity of ``candidate`` logits (default reference: the PyTorch FP32 logits), kept under ``key``."""
        reference = self.reference if reference is None else reference
        self.parity[key] = check_parity(label, reference, candidate, self.config.tolerances(precision))
        self.references[key], self.candidates[key], self.graphs[key] = reference, candidate, graph
        return self.parity[key]

    def failed(self) -> str | None:
        """The key of the first check that failed."""
        return next((k for k, p in self.parity.items() if not p.passed), None)

    def logits(self, graph: onnx.ModelProto, images: np.ndarray | None = None) -> np.ndarray:
        images = self.images if images is None else images
        return run_batched(OrtRunner(serialize(graph)), images, self.config.batch.max)


# -------------------------------------------------------------------------------------------- stages
def stage_build(state: ExportState) -> None:
    """The preset (with weights), the validation images and the PyTorch FP32 reference logits."""
    config = state.config
    state.model, state.weights_info = build_model(
        state.spec.name, config.image_size, state.weights, config.seed, state.weights_format
    )
    state.batch = validation_batch(state.model.data_config, config.num_images, config.seed, state.inputs_dir)
    state.reference = run_batched(TorchRunner(state.model), state.images, config.batch.max)


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
    """Start the background process (:mod:`deploykit.workflows.background`) with the FP16 stage's work that
    needs no graph, on the core the ONNX export leaves idle: the FP16 check's >= :data:`FP16_IMAGES` images
    with the PyTorch reference of those the FP32 stages do not have, then the range check's screen."""
    from deploykit.workflows.background import Worker

    config = state.config
    context = {"model": state.model, "rewritten": state.rewritten, "images": state.images}
    state.worker = Worker(state.staging, context)
    count = max(FP16_IMAGES, config.num_images)
    state.jobs["inputs"] = state.worker.submit(fp16_inputs, count, config.seed, state.inputs_dir, BULK_BATCH)
    state.jobs["screen"] = state.worker.submit(fp16_screen, _range_picks(state))


def _range_picks(state: ExportState) -> np.ndarray:
    """:data:`RANGE_IMAGES` of the FP32 stages' images, spread over their kinds (photos first, noise last)."""
    return np.unique(np.linspace(0, len(state.images) - 1, RANGE_IMAGES).round().astype(int))


def stage_rewrite(state: ExportState) -> None:
    """Export-friendly module swaps, checked in PyTorch."""
    state.rewritten, state.records = rewrites.apply_rewrites(state.model)
    logits = run_batched(TorchRunner(state.rewritten), state.images, state.config.batch.max)
    state.check("rewrites", "rewrites (torch)", logits, None)


def stage_onnx(state: ExportState) -> None:
    """torch.onnx.export (dynamo; the TorchScript exporter when dynamo fails, recorded in the manifest)."""
    config = state.config
    try:
        proto = export_onnx(
            state.rewritten, state.input_size, config.opset, config.exporter, config.batch.max
        )
    except ExportError as exc:
        if config.exporter != "dynamo":
            raise
        state.exporter_notes.append(f"dynamo failed ({exc}); fell back to torchscript")
        state.config = config = dataclasses.replace(config, exporter="torchscript")
        proto = export_onnx(
            state.rewritten, state.input_size, config.opset, config.exporter, config.batch.max
        )
    state.exported = state.proto = proto
    state.check("onnx", "onnx (onnxruntime)", state.logits(proto), proto)


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

    t = time.perf_counter()
    inputs, screen = state.jobs["inputs"], state.jobs["screen"]
    state.fp16_images, state.fp16_rows, computed = inputs.result()
    peak = screen.result()
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
        state.fp16_io,
        BULK_BATCH,
        tol,
        state.images[_range_picks(state)],
        peak,
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


def stage_engine(state: ExportState) -> None:
    """The TensorRT engine of the published graph (build_engine.sh where TensorRT or a GPU is missing)."""
    _artifacts(state)  # the engine is built from the staged file
    source = "model.fp16.onnx" if state.fp16 else "model.onnx"
    state.engine_info = _engine_stage(
        state.staging, source, state.input_size, state.config, state.timing_cache, expect_fp16=state.fp16
    )


def stage_manifest(state: ExportState) -> None:
    """manifest.json and report.html beside the artifacts, then everything moved into place."""
    _write_manifest(state)
    # models first, manifest last: a published manifest never describes a missing file
    for name in [*state.manifest["artifacts"], REPORT_NAME, "manifest.json"]:
        (state.staging / name).replace(state.out / name)


def _end_background(state: ExportState) -> None:
    """The export is done, failed or interrupted: the background process ends, its files go."""
    if state.worker is not None:
        state.worker.close()


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
    weights = f" with weights {state.weights}" if state.weights else ""
    return f"{state.spec.name} ({state.spec.family}){weights}"


STAGES: tuple[Stage, ...] = (
    Stage("build", stage_build, _describe_build),
    Stage("rewrite", stage_rewrite, lambda s: "export-friendly module swaps"),
    Stage(
        "fp16-reference",
        stage_fp16_reference,
        lambda s: "FP16 check's images, PyTorch reference and range screen, in a background process",
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
    Stage("engine", stage_engine, lambda s: "TensorRT strongly typed build", lambda s: s.engine, True),
    Stage("manifest", stage_manifest, lambda s: f"manifest.json, {REPORT_NAME}, publish", needs_parity=True),
)


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
    """Export ``preset`` to ``<out_dir>/model.onnx`` (+ ``model.fp16.onnx`` with ``fp16``),
    ``manifest.json`` and ``report.html``; with ``engine``, build (or script) the TensorRT engine. Runs
    :data:`STAGES` over one :class:`ExportState`. Raises ParityError if parity fails (nothing is published
    then; see the module doc)."""
    spec = get_preset(preset)
    config = config or default_config(spec.family)
    out = ensure_writable_dir(Path(out_dir) if out_dir is not None else Path("deploykit_out") / spec.name)
    state = ExportState(
        spec, config, out, weights, weights_format, inputs_dir, fp16, fp16_io, engine, timing_cache
    )
    t0 = time.perf_counter()
    with staging_dir(out) as staging:
        state.staging = staging
        try:
            for stage in STAGES:
                if not stage.enabled(state):
                    continue
                if stage.needs_parity and state.failed():
                    _reject(state)
                progress(stage.name, stage.describe(state))
                stage.run(state)
                state.timings[stage.name] = round(time.perf_counter() - t0 - sum(state.timings.values()), 3)
        finally:
            _end_background(state)
    sizes = ", ".join(f"{n} ({len(d) / 1e6:.1f} MB)" for n, d in state.artifacts.items())
    progress("done", f"{out}: {sizes}, manifest.json, {REPORT_NAME}")
    return ExportResult(out, out / "model.onnx", out / "manifest.json", state.manifest, state.parity)


# ---------------------------------------------------------------------------------------- manifest
def _finish(state: ExportState, graph: onnx.ModelProto, precision: str, lint_count: int) -> bytes:
    """The graph with deploykit's metadata, serialized."""
    result = state.parity["fp16" if precision == "fp16" else "dynamic batch"]
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
    if state.weights_info is not None:
        meta["deploykit.weights_sha256"] = state.weights_info.sha256
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


def _artifacts(state: ExportState) -> dict[str, bytes]:
    """The ONNX files with their metadata, serialized and staged once."""
    if not state.artifacts:
        state.artifacts["model.onnx"] = _finish(state, state.proto, "fp32", len(state.lint.violations))
        if state.fp16_proto is not None:
            lint = len(state.fp16_info["lint"]["violations"])
            data = _finish(state, state.fp16_proto, "fp16", lint)
            state.artifacts["model.fp16.onnx"] = data
            state.fp16_info["size_ratio"] = round(len(data) / len(state.artifacts["model.onnx"]), 4)
        for name, data in state.artifacts.items():
            atomic_write_bytes(state.staging / name, data)
    return state.artifacts


def _manifest(state: ExportState) -> dict[str, Any]:
    config, model = state.config, state.model
    artifacts = {name: {"sha256": sha256_bytes(d), "bytes": len(d)} for name, d in _artifacts(state).items()}
    for name in [state.engine_info.get("script"), *state.engine_info.get("files", [])]:
        if name:
            data = (state.staging / name).read_bytes()
            artifacts[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    image_size = {"image_size": config.image_size} if config.image_size else {}
    manifest = {
        "preset": state.spec.name,
        "family": state.spec.family,
        "model_config": _jsonable(dict(state.spec.kwargs) | image_size),
        "preprocessing": _jsonable(vars(model.data_config)),
        "export_config": _jsonable(config.to_dict()),
        "versions": versions(),
        "opset": config.opset,
        "exporter": config.exporter,
        "exporter_notes": state.exporter_notes,
        "weights": state.weights_info.to_dict() if state.weights_info else None,
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
        "engine": state.engine_info,
        "artifacts": artifacts,
        "timings_s": state.timings,
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


def _reject(state: ExportState) -> None:
    """Parity failed: find the first diverging module, move everything to ``rejected/``, raise."""
    from deploykit.workflows.locate import locate_failure

    key = state.failed()
    result = state.parity[key]
    images = state.fp16_images if key == "fp16" else state.images
    if len(state.candidates[key]) == len(images):  # not "dynamic batch": its rows repeat images
        tol = state.config.tolerances("fp16" if key == "fp16" else "fp32")
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
    _end_background(state)
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
