"""``manifest.json``: everything one export made and checked, built from its products."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import onnx

import deploykit
from deploykit.core.io import sha256_bytes
from deploykit.core.onnx_io import io_signature
from deploykit.transforms.simplify import Simplifier, SimplifyResult
from deploykit.validation.metrics import per_sample
from deploykit.workflows.export.model import model_record
from deploykit.workflows.export.products import ExportRun, Products, Staged


def jsonable(value: Any) -> Any:
    """``value`` with every container made JSON (tuples as lists, types by their qualified name)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def versions() -> dict[str, str]:
    import onnxruntime
    import torch

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


def build_manifest(run: ExportRun, products: Products, staged: Staged) -> dict[str, Any]:
    """The manifest of ``run`` as far as its ``products`` go (a rejected export's too)."""
    graph, prepared = products.graph, run.prepared
    config = dataclasses.replace(run.config, exporter=graph.exporter)
    manifest = {
        "preset": prepared.spec.name,
        "family": prepared.spec.family,
        "model_config": jsonable(dict(prepared.spec.kwargs) | prepared.model_args),
        "preprocessing": jsonable(vars(run.model.data_config)),
        "export_config": jsonable(config.to_dict()),
        "versions": versions(),
        "opset": config.opset,
        "exporter": config.exporter,
        "exporter_notes": list(graph.exporter_notes),
        "trace_cache": graph.trace_cache.to_dict() if graph.trace_cache else None,
        "weights": prepared.weights_info.to_dict() if prepared.weights_info else None,
        "model": {
            **model_record(prepared),
            "inferred": prepared.inferred.to_dict() if prepared.inferred else None,
        },
        "random_weights": prepared.random_weights,
        "labels": list(prepared.labels) if prepared.labels is not None else None,
        "rewrites": [r.to_dict() for r in products.rewritten.records],
        "io": io_signature(graph.proto),
        "nodes": {"exported": len(graph.exported.graph.node), "final": len(graph.proto.graph.node)},
        "simplify": (graph.simplify or _not_simplified(graph.proto)).to_dict(),
        "validation_inputs": _inputs(run, products),
        "parity": {name: p.to_dict() for name, p in run.checks.parity.items()},
        "per_image": {k: per_sample(run.checks.references[k], c) for k, c in run.checks.candidates.items()},
        "lint": graph.lint.to_dict(),
        **({"fp16": {**products.fp16.info, **staged.fp16_extra}} if products.fp16 is not None else {}),
        **({"int8": _int8_info(products, staged)} if products.int8 is not None else {}),
        **({"dataset": products.dataset.info} if products.dataset is not None else {}),
        "engine": products.engine,
        "reference": staged.reference,
        "artifacts": _artifacts(run, products, staged),
        "timings_s": run.timings,
        "background": {k: {"seconds": job.seconds, "ran": job.where} for k, job in run.jobs.items()},
        "passed": run.checks.failed() is None,
    }
    if products.locate is not None:
        manifest["first_divergence"] = products.locate.first.to_dict() if products.locate.first else None
        manifest["locate"] = products.locate.to_dict()
    return manifest


def _inputs(run: ExportRun, products: Products) -> dict[str, Any]:
    inputs_dir = run.request.inputs_dir
    return {
        "count": len(products.built.images),
        "names": list(products.built.batch.names),
        "source": str(inputs_dir) if inputs_dir else "built-in",
    }


def _int8_info(products: Products, staged: Staged) -> dict[str, Any]:
    info = dict(products.int8.info)
    for part, extra in staged.int8_extra.items():
        info[part] = {**info[part], **extra}
    return info


def _artifacts(run: ExportRun, products: Products, staged: Staged) -> dict[str, dict[str, Any]]:
    """The sha256 and size of every file: the staged ones, and the engine stage's."""
    artifacts = {name: {"sha256": sha256_bytes(d), "bytes": len(d)} for name, d in staged.files.items()}
    engine = products.engine
    for name in [engine.get("script"), *engine.get("files", [])]:
        if name:
            data = (run.staging / name).read_bytes()
            artifacts[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
    return artifacts


def _not_simplified(proto: onnx.ModelProto) -> SimplifyResult:
    nodes = len(proto.graph.node)
    return SimplifyResult(
        tool=Simplifier.NONE, nodes_before=nodes, nodes_after=nodes, notes=("--no-simplify",)
    )
