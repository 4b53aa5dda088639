"""``build_engine.sh``: the TensorRT 11 ``trtexec`` command that builds the same engine on the target.

Written when this machine cannot build the engine itself (no TensorRT 11 or no GPU). The flags follow
"Migrating trtexec Usage from TensorRT 10.x to 11.x": no ``--fp16`` (all precision flags were removed
because every network is strongly typed; the FP16 ONNX graph already carries its types) and no
``--stronglyTyped`` (no longer needed, always on). The workspace is ``--memPoolSize=workspace:<N>M``
(``--workspace`` was removed in 10.x; the ``M`` suffix makes the unit explicit).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from deploykit.errors import ConfigError
from deploykit.export.config import BatchProfile
from deploykit.export.io import atomic_write_text

SCRIPT_NAME = "build_engine.sh"


def _dims(batch: int, chw: tuple[int, int, int]) -> str:
    return "x".join(str(d) for d in (batch, *chw))


def trtexec_args(
    onnx_name: str,
    batch: BatchProfile,
    input_name: str,
    input_shape_chw: tuple[int, int, int],
    workspace_mib: int,
    opt_level: int,
    timing_cache_name: str,
    engine_name: str,
) -> list[str]:
    """The trtexec arguments (one flag each), paths relative to the script's directory."""
    if len(input_shape_chw) != 3 or any(int(d) < 1 for d in input_shape_chw):
        raise ConfigError(f"input shape must be three positive dims C,H,W, got {input_shape_chw!r}")
    chw = tuple(int(d) for d in input_shape_chw)
    return [
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={input_name}:{_dims(batch.min, chw)}",
        f"--optShapes={input_name}:{_dims(batch.opt, chw)}",
        f"--maxShapes={input_name}:{_dims(batch.max, chw)}",
        f"--memPoolSize=workspace:{int(workspace_mib)}M",
        f"--builderOptimizationLevel={int(opt_level)}",
        f"--timingCacheFile={timing_cache_name}",
    ]


def write_build_script(
    onnx_path: str | Path,
    batch: BatchProfile,
    input_name: str,
    input_shape_chw: tuple[int, int, int],
    workspace_mib: int,
    opt_level: int,
    timing_cache_name: str,
    engine_name: str,
    reason: str,
) -> Path:
    """Write ``build_engine.sh`` beside ``onnx_path`` (atomically, mode 755) and return its path."""
    onnx_path = Path(onnx_path)
    args = trtexec_args(
        onnx_path.name,
        batch,
        input_name,
        input_shape_chw,
        workspace_mib,
        opt_level,
        timing_cache_name,
        engine_name,
    )
    why = " ".join(str(reason).split()) or "unknown"
    lines = [
        "#!/usr/bin/env bash",
        f"# Build {engine_name} from {onnx_path.name} with TensorRT 11 trtexec.",
        "#",
        "# Why this script exists: a TensorRT engine is specific to the GPU, driver and TensorRT version",
        "# that built it, so engines must be built on the target device. deploykit could not build one on",
        f"# the machine that exported the model: {why}.",
        "#",
        "# TensorRT 11 builds every network strongly typed: there is no --fp16 (or --stronglyTyped); the",
        "# precision is the tensor types in the ONNX graph. The timing cache makes rebuilds faster.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "trtexec \\",
        *(f"    {shlex.quote(a)} \\" for a in args),
        '    "$@"',
    ]
    path = onnx_path.parent / SCRIPT_NAME
    atomic_write_text(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    return path
