"""Stage: graph simplification with onnxsim, falling back to onnxslim, else the graph unchanged."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import onnx

from deploykit.core.artifacts import Named
from deploykit.core.errors import first_line
from deploykit.core.interrupts import reraise_if_interrupted


class Simplifier(Named):
    """What simplified the graph: onnxsim, onnxslim, or nothing (the graph as exported)."""

    ONNXSIM = "onnxsim"
    ONNXSLIM = "onnxslim"
    NONE = "none"


@dataclass(frozen=True, kw_only=True)
class SimplifyResult:
    tool: Simplifier
    nodes_before: int
    nodes_after: int
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "tool": self.tool,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "notes": list(self.notes),
        }


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def simplify_onnx(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, SimplifyResult]:
    before = len(proto.graph.node)
    notes: list[str] = []
    try:
        import onnxsim

        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(proto)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return simplified, SimplifyResult(
            tool=Simplifier.ONNXSIM, nodes_before=before, nodes_after=len(simplified.graph.node)
        )
    except Exception as exc:
        reraise_if_interrupted(exc)
        notes.append(f"onnxsim failed: {_first_line(exc)}")
    try:
        import onnxslim

        with contextlib.redirect_stdout(io.StringIO()):
            simplified = onnxslim.slim(proto)
        after = len(simplified.graph.node)
        return simplified, SimplifyResult(
            tool=Simplifier.ONNXSLIM, nodes_before=before, nodes_after=after, notes=tuple(notes)
        )
    except Exception as exc:
        reraise_if_interrupted(exc)
        notes.append(f"onnxslim failed: {_first_line(exc)}")
    notes.append("kept the unsimplified graph")
    return proto, SimplifyResult(
        tool=Simplifier.NONE, nodes_before=before, nodes_after=before, notes=tuple(notes)
    )
