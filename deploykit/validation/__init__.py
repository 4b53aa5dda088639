"""Validation inputs and the parity comparator.

Owns: comparing outputs (it never orchestrates: it is handed models, graphs and images).
May import: core, models, runtime."""

from deploykit.validation.inputs import ValidationBatch, validation_batch
from deploykit.validation.metrics import (
    Check,
    CheckKind,
    OutputMetrics,
    ParityResult,
    Tolerances,
    check,
    compare_outputs,
    compute_metrics,
)

__all__ = [
    "Check",
    "CheckKind",
    "OutputMetrics",
    "ParityResult",
    "Tolerances",
    "ValidationBatch",
    "check",
    "compare_outputs",
    "compute_metrics",
    "validation_batch",
]
