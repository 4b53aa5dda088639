"""Locating a failed parity check: the export rewrites first (PyTorch against PyTorch), then the ONNX graph
module by module (the comparisons themselves are :mod:`deploykit.validation.locate`)."""

from __future__ import annotations

import numpy as np
import onnx

from deploykit.core.config import Tolerances
from deploykit.transforms import rewrites
from deploykit.validation.locate import LocateReport, locate_in_onnx, locate_in_torch, worst_images


def locate_failure(
    model,
    images: np.ndarray,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    fp32: Tolerances,
    tol: Tolerances,
    graph: onnx.ModelProto | None,
    stage: str,
    rewritten=None,
) -> LocateReport:
    """Locate a failed parity check: first the export rewrites (PyTorch against PyTorch, FP32
    tolerances), then ``graph`` (the ONNX the failing candidate ran) against the rewritten PyTorch model
    it was exported from, with ``tol``.

    ``rewritten``: the rewritten model when the caller has it (the export pipeline); otherwise the
    registered rewrites are applied to ``model`` again.
    """
    picked = images[worst_images(reference, candidate)]
    if rewritten is None:
        rewritten, _ = rewrites.apply_rewrites(model)
    report = locate_in_torch(model, rewritten, picked, fp32, "rewrites")
    if report.first is not None or graph is None:
        return report
    # the graph was exported from the rewritten model: its module outputs are the rewritten modules' (a
    # folded Conv+BN's conv already outputs what the BN did), which the first step proved equal to the model
    return locate_in_onnx(rewritten, graph, picked, tol, stage)
