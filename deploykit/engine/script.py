"""``build_engine.sh``: the ``trtexec`` command that builds the same engine on the target device.

Written when this machine cannot build the engine itself (no TensorRT or no GPU). The script works with
trtexec from TensorRT 10.3 (JetPack 6) to 11.x and reads the version when it runs (trtexec has no
``--version``: the banner of ``trtexec --help`` says ``[TensorRT v100300]``):

* every build is strongly typed, so the FP16/FP32 types of the ONNX graph are what runs: TensorRT 11
  always is ("Migrating trtexec Usage from TensorRT 10.x to 11.x": ``--stronglyTyped`` is no longer
  needed); trtexec 10.x gets ``--stronglyTyped``. Never ``--fp16``, ``--best`` or ``--int8`` (weak typing:
  TensorRT would pick precisions itself; 11.x removed them);
* ``--noTF32`` where this trtexec offers it (read from its ``--help``), as the Python builder clears
  ``BuilderFlag.TF32``: FP32 layers compute FP32;
* the workspace is ``--memPoolSize=workspace:<N>M`` (``--workspace`` was removed in 10.x).

``trtexec`` is taken from ``$TRTEXEC``, else ``PATH``, else JetPack's ``/usr/src/tensorrt/bin/trtexec``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from deploykit.core.config import BatchProfile
from deploykit.core.errors import ConfigError
from deploykit.core.io import atomic_write_text

SCRIPT_NAME = "build_engine.sh"


def _dims(batch: int, chw: tuple[int, int, int]) -> str:
    return "x".join(str(d) for d in (batch, *chw))


def trtexec_args(
    onnx_name: str,
    *,
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


def _header(onnx_name: str, engine_name: str, reason: str) -> list[str]:
    """The shebang and the comment that says what the script builds and why it exists (one line of reason)."""
    why = " ".join(str(reason).split()) or "unknown"
    return [
        "#!/usr/bin/env bash",
        f"# Build {engine_name} from {onnx_name} with trtexec (TensorRT 10.3 or newer).",
        "#",
        "# Why this script exists: a TensorRT engine is specific to the GPU, driver and TensorRT version",
        "# that built it, so engines must be built on the target device. deploykit could not build one on",
        f"# the machine that exported the model: {why}.",
        "#",
        "# Strongly typed on every version: the precision is the tensor types in the ONNX graph. TensorRT 11",
        "# always builds that way; trtexec 10.x is given --stronglyTyped. Never --fp16/--best/--int8. TF32 is",
        "# switched off (--noTF32, where this trtexec has it). The timing cache makes rebuilds faster.",
        "# trtexec: $TRTEXEC, else PATH, else JetPack's /usr/src/tensorrt/bin/trtexec.",
    ]


#: finds trtexec, reads its TensorRT version from the ``--help`` banner, refuses < 10.3 and sets ``flags``
#: to the version-dependent arguments (the same for every model)
_FIND_TRTEXEC = (
    "set -euo pipefail",
    'cd "$(dirname "$0")"',
    'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
    'if [ ! -x "$TRTEXEC" ]; then',
    '    echo "build_engine.sh: trtexec not found (put it on PATH or set TRTEXEC=/path/to/trtexec)" >&2',
    "    exit 127",
    "fi",
    "# trtexec has no --version: its banner says [TensorRT v100300] (10.x+: major*10000+minor*100+patch,",
    "# 8.x: major*1000+minor*100+patch)",
    'help=$("$TRTEXEC" --help 2>&1 || true)',
    "if [[ $help =~ TensorRT\\ v([0-9]+) ]]; then version=${BASH_REMATCH[1]}; else",
    '    echo "build_engine.sh: cannot read the TensorRT version from $TRTEXEC --help" >&2',
    "    exit 2",
    "fi",
    'if [ "$version" -ge 100000 ]; then major=$((version / 10000)); minor=$((version / 100 % 100))',
    "else major=$((version / 1000)); minor=$((version / 100 % 10)); fi",
    'if [ "$major" -lt 10 ] || { [ "$major" -eq 10 ] && [ "$minor" -lt 3 ]; }; then',
    '    echo "build_engine.sh: $TRTEXEC is TensorRT $major.$minor; deploykit engines need 10.3 or newer" >&2',
    "    exit 2",
    "fi",
    "flags=()",
    'if [ "$major" -eq 10 ]; then flags+=(--stronglyTyped); fi',
    'case "$help" in *--noTF32*) flags+=(--noTF32) ;; esac',
    'echo "build_engine.sh: TensorRT $major.$minor ($TRTEXEC), version flags: ${flags[*]:-none}" >&2',
)


def _exec_lines(args: list[str]) -> list[str]:
    """``exec trtexec`` with the model's arguments, the version flags and the script's own arguments."""
    return [
        'exec "$TRTEXEC" \\',
        *(f"    {shlex.quote(a)} \\" for a in args),
        '    ${flags[@]+"${flags[@]}"} "$@"',
    ]


def write_build_script(
    onnx_path: str | Path,
    *,
    batch: BatchProfile,
    input_name: str,
    input_shape_chw: tuple[int, int, int],
    workspace_mib: int,
    opt_level: int,
    timing_cache_name: str,
    engine_name: str,
    reason: str,
) -> Path:
    """Write ``build_engine.sh`` beside ``onnx_path`` (atomically, executable) and return its path.

    ``reason`` (why this machine did not build the engine) goes into the script's comment on one line."""
    onnx_path = Path(onnx_path)
    args = trtexec_args(
        onnx_path.name,
        batch=batch,
        input_name=input_name,
        input_shape_chw=input_shape_chw,
        workspace_mib=workspace_mib,
        opt_level=opt_level,
        timing_cache_name=timing_cache_name,
        engine_name=engine_name,
    )
    lines = [*_header(onnx_path.name, engine_name, reason), *_FIND_TRTEXEC, *_exec_lines(args)]
    path = onnx_path.parent / SCRIPT_NAME
    atomic_write_text(path, "\n".join(lines) + "\n", executable=True)
    return path
