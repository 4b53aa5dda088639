"""Artifact kinds by file name: ONNX graphs and TensorRT engines."""

from __future__ import annotations

from pathlib import Path

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def artifact_kind(path: str | Path) -> str | None:
    """``onnx``, ``engine`` or ``None`` (unknown) from the file's suffix."""
    suffix = Path(path).suffix
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    return "engine" if suffix in ENGINE_SUFFIXES else None


def unknown_kind_message(path: str | Path) -> str:
    return f"{path}: unknown artifact type (expected {', '.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)})"
