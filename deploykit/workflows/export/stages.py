"""The export's FP32 stages: build -> rewrite -> onnx -> simplify -> validate -> lint. Each is a function
of what it needs that returns what it makes (:mod:`.products`); it records its parity checks in the run.
``rewrite`` starts the background process (:mod:`.background`) with the PyTorch work that needs no graph —
the FP32 reference and the rewritten model's logits — which ``onnx`` collects after tracing."""

from __future__ import annotations

import dataclasses

import numpy as np

from deploykit.core.artifacts import Precision
from deploykit.core.config import Exporter
from deploykit.core.errors import ExportError, first_line
from deploykit.core.interrupts import reraise_if_interrupted
from deploykit.core.onnx_io import serialize
from deploykit.core.scopes import carry_scopes
from deploykit.runtime.base import run_batched
from deploykit.runtime.ort_runner import OrtRunner
from deploykit.runtime.torch_runner import TorchRunner
from deploykit.transforms import rewrites
from deploykit.transforms.simplify import Simplifier, SimplifyResult, simplify_onnx
from deploykit.transforms.trace_cache import CacheStatus, export_cached
from deploykit.validation import validation_batch
from deploykit.workflows.export.products import Built, ExportRun, Fp32Graph, Rewritten


def stage_build(run: ExportRun) -> Built:
    """The validation images of the prepared model (their PyTorch reference: :func:`stage_rewrite`)."""
    config = run.config
    data_config = run.model.data_config
    return Built(batch=validation_batch(data_config, config.num_images, config.seed, run.request.inputs_dir))


def torch_logits(context: dict, which: str, batch: int) -> np.ndarray:
    """A background job: PyTorch FP32 logits of the FP32 stages' images through ``context[which]``
    (``model``: the reference; ``rewritten``: the rewrite parity check)."""
    return run_batched(TorchRunner(context[which]), context["images"], batch)


def stage_rewrite(run: ExportRun, built: Built) -> Rewritten:
    """Export-friendly module swaps; the background process starts on the PyTorch reference and the
    rewritten model's logits (checked by :func:`stage_onnx`, after tracing)."""
    from deploykit.workflows.export.background import Worker

    module, records = rewrites.apply_rewrites(run.model)
    context = {"model": run.model, "rewritten": module, "images": built.images}
    run.worker = Worker(run.staging, context)
    for which, key in (("model", "reference"), ("rewritten", "rewrites")):
        run.jobs[key] = run.worker.submit(torch_logits, which, run.config.batch.max)
    return Rewritten(module=module, records=tuple(records))


def stage_onnx(run: ExportRun, built: Built, rewritten: Rewritten) -> Fp32Graph:
    """torch.onnx.export (dynamo; the TorchScript exporter when dynamo fails, recorded), through the trace
    cache (:mod:`deploykit.transforms.trace_cache`): a cached graph that fails its parity check is traced
    afresh."""
    from deploykit.workflows.export.background import collect

    graph = _export(run, rewritten)
    logits = run.logits(graph.proto, built.images)  # first: the background process may still be working
    reference, rewrite_logits = collect(run.jobs["reference"], run.jobs["rewrites"])
    _check(
        run, "rewrites", label="rewrites (torch)", reference=reference, candidate=rewrite_logits, graph=None
    )
    graph = dataclasses.replace(graph, reference=reference)
    result = _check(
        run, "onnx", label="onnx (onnxruntime)", reference=reference, candidate=logits, graph=graph.proto
    )
    if graph.trace_cache is not None and graph.trace_cache.status == CacheStatus.HIT and not result.passed:
        notes = [*graph.trace_cache.notes, "the cached graph failed its parity check: traced afresh"]
        graph = dataclasses.replace(_export(run, rewritten, fresh=True), reference=reference)
        graph.trace_cache.notes[:0] = notes
        _check(
            run,
            "onnx",
            label="onnx (onnxruntime)",
            reference=reference,
            candidate=run.logits(graph.proto, built.images),
            graph=graph.proto,
        )
    return graph


def _export(run: ExportRun, rewritten: Rewritten, *, fresh: bool = False) -> Fp32Graph:
    """The traced (or cached) graph; when dynamo fails, the TorchScript exporter's, with a note."""
    config = run.config
    args = (rewritten.module, run.input_size, config.opset)
    exporter, notes = config.exporter, ()
    try:
        proto, cache = export_cached(*args, exporter, config.batch.max, fresh=fresh)
    except ExportError as exc:
        reraise_if_interrupted(exc)  # never a fallback after an interrupt
        if exporter is not Exporter.DYNAMO:
            raise
        notes = (f"dynamo failed ({first_line(exc)}); fell back to torchscript",)
        exporter = Exporter.TORCHSCRIPT
        proto, cache = export_cached(*args, exporter, config.batch.max, fresh=fresh)
    empty = np.empty((0,), dtype=np.float32)
    return Fp32Graph(
        exported=proto,
        proto=proto,
        reference=empty,
        exporter=exporter,
        exporter_notes=notes,
        trace_cache=cache,
    )


def _check(run: ExportRun, key: str, *, label: str, reference, candidate, graph):
    tolerances = run.config.tolerances(Precision.FP32)
    return run.checks.record(
        key, label=label, reference=reference, candidate=candidate, graph=graph, tolerances=tolerances
    )


def stage_simplify(run: ExportRun, built: Built, graph: Fp32Graph) -> Fp32Graph:
    """onnxsim (fallback onnxslim); a simplified graph that changes the numbers is not kept."""
    proto = graph.proto
    simplified, simp = simplify_onnx(proto)
    carry_scopes(proto, simplified)  # the simplifiers drop node metadata: keep module scopes for --locate
    logits = run.logits(simplified, built.images)
    result = _check(
        run,
        "simplified",
        label="simplified (onnxruntime)",
        reference=graph.reference,
        candidate=logits,
        graph=simplified,
    )
    tool_ran = simp.tool != Simplifier.NONE
    if not result.passed and tool_ran:  # a simplifier that changes the numbers is not trusted:
        # its graph is discarded (the exported one passed its own check), so its check does not fail the export
        worst = result.worst()
        note = f"{simp.tool} output failed parity ({worst.describe() if worst else 'see log'}); kept the exported graph"
        simp = SimplifyResult(
            tool=Simplifier.NONE,
            nodes_before=simp.nodes_before,
            nodes_after=simp.nodes_before,
            notes=(*simp.notes, note),
        )
        simplified = proto
        run.checks.drop("simplified")
    return dataclasses.replace(graph, proto=simplified, simplify=simp)


def stage_validate(run: ExportRun, built: Built, graph: Fp32Graph) -> None:
    """The final FP32 file at several batch sizes through one ONNX Runtime session."""
    batch = run.config.batch
    limit = min(batch.max, len(built.images))
    sizes = sorted({s for s in (batch.min, 1, 3, 8, batch.opt) if s <= limit})
    runner = OrtRunner(serialize(graph.proto))
    candidate = np.concatenate([run_batched(runner, built.images[:n], n) for n in sizes])
    reference = np.concatenate([graph.reference[:n] for n in sizes])
    label = f"batch sizes {','.join(map(str, sizes))}"
    _check(run, "dynamic batch", label=label, reference=reference, candidate=candidate, graph=graph.proto)


def stage_lint(graph: Fp32Graph) -> Fp32Graph:
    """The final graph against TensorRT's ONNX-parser operator table."""
    from deploykit.transforms.lint import lint_model

    return dataclasses.replace(graph, lint=lint_model(graph.proto))
