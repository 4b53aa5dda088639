"""``deploykit validate``: the CI gate. Re-runs the PyTorch model and the artifact on the same inputs and
checks parity against the family's tolerances for the artifact's precision.

The artifact knows what it is (:func:`~deploykit.core.record.artifact_record`): the preset, the
classes and resolution, the weights' content hash (ONNX metadata or engine sidecar) and the weights file
(``manifest.json`` beside it). :func:`rebuild_model` rebuilds exactly that model, so ``--model`` and
``--weights`` are optional; given, they must agree with the record (a contradiction is bad usage, exit 2,
not a parity failure).

The gate's verdict is a list of :class:`~deploykit.validation.metrics.Check` records: one per gated parity
metric of every output, one per metric compared with a ``--baseline``, and one for the ``--locate``
finding when it ran. The exit code, the text summary, ``--json`` and ``--junit`` are all rendered from those
records, so they cannot disagree.

Exit codes: 0 every record passed, 1 one failed (parity, or a metric regressed), 2 bad usage or bad input.
"""

from deploykit.workflows.validate.against_reference import torch_available, validate_with_reference
from deploykit.workflows.validate.against_torch import validate_artifact
from deploykit.workflows.validate.gate import GateOutcome, run_gate
from deploykit.workflows.validate.rebuild import artifact_preset, rebuild_model
from deploykit.workflows.validate.report import ValidationReport, locate_check, write_json, write_junit

__all__ = [
    "GateOutcome",
    "ValidationReport",
    "artifact_preset",
    "locate_check",
    "rebuild_model",
    "run_gate",
    "torch_available",
    "validate_artifact",
    "validate_with_reference",
    "write_json",
    "write_junit",
]
