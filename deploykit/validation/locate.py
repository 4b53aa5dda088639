"""Where parity breaks: the first ``nn.Module`` whose output leaves the tolerance.

The reference is the PyTorch model with forward hooks on its modules; the candidate is either a second
PyTorch model (the rewritten one: stage ``rewrites``) or an ONNX graph whose module outputs are found
from the module scopes the export keeps on its nodes (:mod:`deploykit.core.scopes`) and exposed as
extra graph outputs for one ONNX Runtime run. Modules are compared in execution order (the position of the
node producing their output; a module before its parent), so the first one that diverges is the deepest
module where the error starts, never an earlier one that merely carries it.

A module output diverges when its cosine similarity to the reference (per image, flattened) falls below
``module_min_cosine`` or its max abs error exceeds ``module_max_rel`` times the reference's max abs value
(the tolerances of the artifact's precision). Metrics are taken over a few images: the ones whose logits
missed parity the most.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from deploykit.core.scopes import FLOAT_TYPES, ModuleOutput, expose_tensors, module_outputs, tensor_types
from deploykit.validation.metrics import Tolerances, sample_cosine

#: images the module comparison runs on (the worst ones of the failed parity check)
LOCATE_IMAGES = 4


@dataclass(kw_only=True)
class ModuleDivergence:
    module: str
    module_type: str
    stage: str
    max_abs: float
    max_rel: float  # max_abs / max |reference|
    cosine_min: float
    tensor: str | None = None
    nodes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = (
            f" (ONNX tensor {self.tensor!r} from {len(self.nodes)} node(s): {', '.join(self.nodes[:3])}"
            + (", ...)" if len(self.nodes) > 3 else ")")
        )
        return (
            f"{self.module} ({self.module_type}) at stage {self.stage!r}: max abs {self.max_abs:.3g}, "
            f"max rel {self.max_rel:.3g}, cosine min {self.cosine_min:.6f}" + (where if self.tensor else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "module_type": self.module_type,
            "stage": self.stage,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "cosine_min": self.cosine_min,
            "onnx_tensor": self.tensor,
            "onnx_nodes": self.nodes,
            "message": self.describe(),
        }


@dataclass(kw_only=True)
class LocateReport:
    stage: str
    first: ModuleDivergence | None
    compared: int  # modules compared
    unmatched: int  # module outputs in the graph without a comparable PyTorch output
    images: int
    thresholds: dict[str, float]
    note: str = ""

    def describe(self) -> str:
        if self.first is not None:
            return f"first divergence: {self.first.describe()}"
        return (
            f"no module output leaves the tolerance at stage {self.stage!r} ({self.compared} compared"
            + (f"; {self.note}" if self.note else "")
            + ")"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "first_divergence": self.first.to_dict() if self.first else None,
            "modules_compared": self.compared,
            "modules_unmatched": self.unmatched,
            "images": self.images,
            "thresholds": self.thresholds,
            "note": self.note,
            "message": self.describe(),
        }


# ----------------------------------------------------------------------------------------- capture
def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def capture(model, names: list[str] | None, x: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
    """Outputs of the named modules (all when ``None``) for the batch ``x``, and their completion order."""
    import torch

    wanted = dict(model.named_modules()) if names is None else {}
    if names is not None:
        for name in names:
            try:
                wanted[name] = model.get_submodule(name)
            except AttributeError:
                continue
    wanted.pop("", None)
    outputs: dict[str, np.ndarray] = {}
    order: list[str] = []

    def hook_for(name: str):
        def hook(module, args, output):
            tensor = _first_tensor(output)
            if tensor is not None and name not in outputs:
                outputs[name] = tensor.detach().float().cpu().numpy().copy()
                order.append(name)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in wanted.items()]
    try:
        with torch.inference_mode():
            model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs, order


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


class _Stats:
    """Running worst-case metrics of one module over several images."""

    def __init__(self) -> None:
        self.max_abs, self.ref_max, self.cos_min = 0.0, 0.0, 1.0

    def add(self, ref: np.ndarray, cand: np.ndarray) -> bool:
        """Fold one image's outputs in; False when the two are not the same tensor (another shape: a
        rewrite or the graph moved the module's final reshape elsewhere)."""
        if _squeezed(ref.shape) != _squeezed(cand.shape):
            return False
        r = ref.astype(np.float64).reshape(ref.shape[0], -1)
        c = cand.astype(np.float64).reshape(ref.shape[0], -1)
        if not (np.isfinite(c).all() and np.isfinite(r).all()):
            self.max_abs, self.cos_min = math.inf, -1.0
            return True
        self.max_abs = max(self.max_abs, float(np.abs(c - r).max()))
        self.ref_max = max(self.ref_max, float(np.abs(r).max()))
        self.cos_min = min(self.cos_min, float(sample_cosine(r, c).min()))
        return True

    @property
    def max_rel(self) -> float:
        return self.max_abs / max(self.ref_max, 1e-12)

    def diverged(self, tol: Tolerances) -> bool:
        return self.cos_min < tol.module_min_cosine or self.max_rel > tol.module_max_rel


def _thresholds(tol: Tolerances) -> dict[str, float]:
    return {"module_max_rel": tol.module_max_rel, "module_min_cosine": tol.module_min_cosine}


def worst_images(reference: np.ndarray, candidate: np.ndarray, count: int = LOCATE_IMAGES) -> np.ndarray:
    """Indices of the images whose logits differ the most (the most informative ones to trace)."""
    err = np.abs(candidate.astype(np.float64) - reference).reshape(len(reference), -1).max(axis=1)
    err = np.where(np.isfinite(err), err, np.inf)
    return np.argsort(-err, kind="stable")[:count]


class OnnxModules:
    """Module outputs of an ONNX graph: one ONNX Runtime session with every module's output exposed."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        from deploykit.runtime.ort_runner import OrtRunner

        types = tensor_types(proto)
        self.outputs = module_outputs(proto, {name for name, t in types.items() if t in FLOAT_TYPES})
        probe, exposed = expose_tensors(proto, sorted({m.tensor for m in self.outputs}))
        self.outputs = [m for m in self.outputs if m.tensor in set(exposed)]
        self.runner = OrtRunner(probe.SerializeToString())
        self.names = [o.name for o in self.runner.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self.runner.input_name: x.astype(self.runner.input_dtype)}
        values = dict(zip(self.names, self.runner.session.run(None, feed)))
        return {m.module: values[m.tensor] for m in self.outputs if m.tensor in values}


def first_divergence(
    order: list[str],
    reference: Callable[[np.ndarray], dict[str, np.ndarray]],
    candidate: Callable[[np.ndarray], dict[str, np.ndarray]],
    images: np.ndarray,
    tol: Tolerances,
) -> tuple[str | None, dict[str, _Stats]]:
    """Compare module outputs image by image; the first module of ``order`` that diverges, and the
    metrics of every module compared (modules whose outputs are not the same tensor are left out)."""
    stats: dict[str, _Stats] = {}
    mismatched: set[str] = set()
    for i in range(len(images)):
        ref, cand = reference(images[i : i + 1]), candidate(images[i : i + 1])
        for name in order:
            if name not in ref or name not in cand or name in mismatched:
                continue
            if not stats.setdefault(name, _Stats()).add(ref[name], cand[name]):
                mismatched.add(name)
                stats.pop(name)
    return next((n for n in order if n in stats and stats[n].diverged(tol)), None), stats


def _divergence(
    name: str, stats: _Stats, module_type: str, stage: str, where: ModuleOutput | None
) -> ModuleDivergence:
    return ModuleDivergence(
        module=name,
        module_type=module_type,
        stage=stage,
        max_abs=stats.max_abs,
        max_rel=stats.max_rel,
        cosine_min=stats.cos_min,
        tensor=where.tensor if where else None,
        nodes=list(where.nodes) if where else [],
    )


# ------------------------------------------------------------------------------------------ locate
def locate_in_torch(
    reference_model, candidate_model, images: np.ndarray, tol: Tolerances, stage: str = "rewrites"
) -> LocateReport:
    """The first module of ``candidate_model`` whose output differs from the same-named module of
    ``reference_model`` (e.g. a rewrite that changed the numbers)."""
    order = capture(reference_model, None, images[:1])[1]
    # a rewrite may change a module's own weights on purpose (a Conv+BN fold: the conv's output is the
    # BN's now) or replace it; compare only the modules it left as they were (their parents included)
    order = [n for n in order if _same_module(reference_model, candidate_model, n)]
    first, stats = first_divergence(
        order,
        lambda x: capture(reference_model, order, x)[0],
        lambda x: capture(candidate_model, order, x)[0],
        images,
        tol,
    )
    modules = dict(reference_model.named_modules())
    found = _divergence(first, stats[first], type(modules[first]).__name__, stage, None) if first else None
    return _report(stage, found, stats=stats, order=order, images=images, tol=tol)


def _report(stage: str, found, *, stats: dict, order: list, images, tol) -> LocateReport:
    """The report of a module-by-module comparison: the first divergence and how much was compared."""
    return LocateReport(
        stage=stage,
        first=found,
        compared=len(stats),
        unmatched=len(order) - len(stats),
        images=len(images),
        thresholds=_thresholds(tol),
    )


def _same_module(reference_model, candidate_model, name: str) -> bool:
    """Whether module ``name`` has the same type and the same own parameters and buffers in both."""
    try:
        ref, cand = reference_model.get_submodule(name), candidate_model.get_submodule(name)
    except AttributeError:
        return False
    if type(ref) is not type(cand):
        return False
    own = dict(ref.named_parameters(recurse=False)) | dict(ref.named_buffers(recurse=False))
    theirs = dict(cand.named_parameters(recurse=False)) | dict(cand.named_buffers(recurse=False))
    return own.keys() == theirs.keys() and all(
        own[k].shape == theirs[k].shape and bool((own[k] == theirs[k]).all()) for k in own
    )


def locate_in_onnx(
    reference_model, proto: onnx.ModelProto, images: np.ndarray, tol: Tolerances, stage: str
) -> LocateReport:
    """The first module output of the ONNX graph ``proto`` that differs from the PyTorch module of the
    same name in ``reference_model``."""
    graph = OnnxModules(proto)
    if not graph.outputs:
        note = "the graph records no module scopes (export it with deploykit)"
        return LocateReport(
            stage=stage,
            first=None,
            compared=0,
            unmatched=0,
            images=len(images),
            thresholds=_thresholds(tol),
            note=note,
        )
    modules = dict(reference_model.named_modules())
    by_module = {m.module: m for m in graph.outputs if m.module in modules}
    order = [m.module for m in graph.outputs if m.module in by_module]
    first, stats = first_divergence(
        order, lambda x: capture(reference_model, order, x)[0], graph, images, tol
    )
    found = (
        _divergence(first, stats[first], type(modules[first]).__name__, stage, by_module[first])
        if first
        else None
    )
    return LocateReport(
        stage=stage,
        first=found,
        compared=len(stats),
        unmatched=len(graph.outputs) - len(stats),
        images=len(images),
        thresholds=_thresholds(tol),
    )


def locate_between_graphs(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, images: np.ndarray, tol: Tolerances, stage: str
) -> LocateReport:
    """The first module whose output in ``candidate`` (e.g. the FP16 graph) drifts from the same tensor of
    ``reference`` (the FP32 graph it was converted from); no PyTorch needed."""
    ref, cand = OnnxModules(reference), OnnxModules(candidate)
    by_module = {m.module: m for m in ref.outputs}
    order = [m.module for m in ref.outputs]
    first, stats = first_divergence(order, ref, cand, images, tol)
    found = _divergence(first, stats[first], "module", stage, by_module[first]) if first else None
    return _report(stage, found, stats=stats, order=order, images=images, tol=tol)
