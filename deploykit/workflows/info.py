"""``deploykit list`` and ``deploykit inspect``: what is registered, and what an ONNX file holds."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import Variant
from deploykit.core.io import atomic_write_text
from deploykit.core.onnx_io import io_signature, load_onnx
from deploykit.core.record import metadata_of, variant_of


@dataclass(frozen=True, kw_only=True)
class PresetRow:
    """One registered preset as ``deploykit list`` shows it."""

    name: str
    family: str
    params: int
    reference_params: str
    image_size: int
    reference: str


def preset_rows(pattern: str | None = None) -> list[PresetRow]:
    """The registered presets (optionally matching an fnmatch ``pattern``), with their parameter counts."""
    from deploykit.models import get_preset, list_models, preset_parameter_count

    rows = []
    for name in list_models(pattern):
        p = get_preset(name)
        ref = (
            "" if p.reference_params_m is None else f"{p.reference_params_m:.{p.reference_params_decimals}f}"
        )
        rows.append(
            PresetRow(
                name=name,
                family=p.family,
                params=preset_parameter_count(name),
                reference_params=ref,
                image_size=p.kwargs.get("image_size", 224),
                reference=p.reference,
            )
        )
    return rows


@dataclass(frozen=True, kw_only=True)
class OnnxFacts:
    """What ``deploykit inspect`` reports about one ONNX file."""

    file: str
    bytes: int
    nodes: int
    initializers: int
    opsets: dict[str, int]
    ops: Counter
    signature: dict[str, Any]
    variant: Variant
    metadata: dict[str, str]
    lint: Any  # deploykit.transforms.lint.LintReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "bytes": self.bytes,
            "nodes": self.nodes,
            "opsets": self.opsets,
            "ops": dict(self.ops.most_common()),
            "precision": self.variant.precision,
            "variant": self.variant,
            **self.signature,
            "metadata": self.metadata,
            "lint": self.lint.to_dict(),
        }


def inspect_onnx(onnx_file: str | Path, json_out: str | Path | None = None) -> OnnxFacts:
    """Opset, I/O, op histogram, variant (by its operators: a quantized graph keeps FP32 metadata), size,
    metadata and TensorRT-parser lint of ``onnx_file``; with ``json_out`` also written as JSON."""
    from deploykit.transforms.lint import lint_model

    proto = load_onnx(onnx_file)
    facts = OnnxFacts(
        file=str(onnx_file),
        bytes=Path(onnx_file).stat().st_size,
        nodes=len(proto.graph.node),
        initializers=len(proto.graph.initializer),
        opsets={(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        ops=Counter(n.op_type for n in proto.graph.node),
        signature=io_signature(proto),
        variant=variant_of(onnx_file, proto=proto),
        metadata=metadata_of(proto),
        lint=lint_model(proto),
    )
    if json_out:
        atomic_write_text(json_out, json.dumps(facts.to_dict(), indent=2) + "\n")
    return facts
