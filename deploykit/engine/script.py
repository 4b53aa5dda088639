"""``build_engine.sh``: the ``trtexec`` command that builds the same engine on the target device.

Written when this machine cannot build the engine itself (no TensorRT or no GPU). The script works with
trtexec from TensorRT 10.3 (JetPack 6) to 11.x and reads the version when it runs (trtexec has no
``--version``: the banner of ``trtexec --help`` says ``[TensorRT v100300]``):

* every build is strongly typed, so the FP16/FP32 types of the ONNX graph are what runs: TensorRT 11
  always is ("Migrating trtexec Usage from TensorRT 10.x to 11.x": ``--stronglyTyped`` is no longer
  needed); trtexec 10.x gets ``--stronglyTyped``. Never ``--fp16``, ``--best`` or ``--int8`` (weak typing:
  TensorRT would pick precisions itself; 11.x removed them). An INT8 graph (``model.int8.onnx``) is
  explicitly quantized (QuantizeLinear/DequantizeLinear): the same strongly typed command builds its int8
  layers, with no ``--int8`` and no calibration cache;
* ``--noTF32`` where this trtexec offers it (read from its ``--help``), as the Python builder clears
  ``BuilderFlag.TF32``: FP32 layers compute FP32;
* the workspace is ``--memPoolSize=workspace:<N>M`` (``--workspace`` was removed in 10.x);
* asked for (``deploykit build --version-compatible / --hardware-compatible``): ``--versionCompatible`` (the
  engine runs on this TensorRT and later ones) and ``--hardwareCompatibilityLevel=ampere+`` (any
  Ampere-or-newer GPU), each only where this trtexec lists it in ``--help`` (else the script stops with one
  line), and the hardware level never on a Jetson (``/etc/nv_tegra_release``: JetPack does not support it).

``trtexec`` is taken from ``$TRTEXEC``, else ``PATH``, else JetPack's ``/usr/src/tensorrt/bin/trtexec``.
One script may build several engines of one export (``extra_builds``: e.g. ``model.int8.engine`` from
``model.int8.onnx`` after ``model.engine``), one after the other with the same shapes and settings; the
first failure stops it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
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


def _header(builds: list[tuple[str, str]], reason: str) -> list[str]:
    """The shebang and the comment that says what the script builds and why it exists (one line of reason)."""
    why = " ".join(str(reason).split()) or "unknown"
    if len(builds) == 1:
        what = [f"# Build {builds[0][1]} from {builds[0][0]} with trtexec (TensorRT 10.3 or newer)."]
    else:
        what = [
            "# Build, one after the other, with trtexec (TensorRT 10.3 or newer):",
            *(f"#   {engine} from {onnx}" for onnx, engine in builds),
        ]
    quantized = [onnx for onnx, _ in builds if onnx.endswith(".int8.onnx")]
    return [
        "#!/usr/bin/env bash",
        *what,
        "#",
        "# Why this script exists: a TensorRT engine is specific to the GPU, driver and TensorRT version",
        "# that built it, so engines must be built on the target device. deploykit could not build one on",
        f"# the machine that exported the model: {why}.",
        "#",
        "# Strongly typed on every version: the precision is the tensor types in the ONNX graph. TensorRT 11",
        "# always builds that way; trtexec 10.x is given --stronglyTyped. Never --fp16/--best/--int8. TF32 is",
        "# switched off (--noTF32, where this trtexec has it). The timing cache makes rebuilds faster.",
        "# trtexec: $TRTEXEC, else PATH, else JetPack's /usr/src/tensorrt/bin/trtexec.",
        *(
            line
            for onnx in quantized
            for line in (
                f"# {onnx} is explicitly quantized (QuantizeLinear/DequantizeLinear with its own scales):",
                "# its int8 layers come from strong typing too, with no --int8 and no calibration cache.",
            )
        ),
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
)
#: says which flags the version (and the compatibility asked for) added
_SAY_FLAGS = 'echo "build_engine.sh: TensorRT $major.$minor ($TRTEXEC), version flags: ${flags[*]:-none}" >&2'


def _need_flag(flag: str, value: str) -> list[str]:
    """Add ``value`` to the flags when this trtexec lists ``flag`` in its ``--help``, else stop in one line."""
    missing = f"build_engine.sh: $TRTEXEC (TensorRT $major.$minor) has no {flag}; build without it"
    return [f'case "$help" in *{flag}*) flags+=({value}) ;; *) echo "{missing}" >&2; exit 2 ;; esac']


def _compat_lines(version_compatible: bool, hardware_compatible: bool) -> list[str]:
    """The version- and hardware-compatibility flags asked for (trtexec's spelling: ``--versionCompatible``,
    ``--hardwareCompatibilityLevel=ampere+``); the hardware level is refused on a Jetson."""
    lines = []
    if version_compatible:
        lines += [
            "# --versionCompatible: the plan embeds the lean runtime; it runs on this TensorRT and later ones",
            *_need_flag("--versionCompatible", "--versionCompatible"),
        ]
    if hardware_compatible:
        lines += [
            "# --hardwareCompatibilityLevel=ampere+: runs on any Ampere-or-newer GPU (not on Jetson/JetPack)",
            "if [ -e /etc/nv_tegra_release ]; then",
            '    echo "build_engine.sh: --hardwareCompatibilityLevel=ampere+ is not supported on a Jetson '
            '(JetPack); build without it" >&2',
            "    exit 2",
            "fi",
            *_need_flag("--hardwareCompatibilityLevel", "--hardwareCompatibilityLevel=ampere+"),
        ]
    return lines


def _exec_lines(args: list[str], *, last: bool = True) -> list[str]:
    """trtexec with the model's arguments, the version flags and the script's own arguments: ``exec`` for
    the last build, a plain command (``set -e`` stops the script if it fails) before it."""
    return [
        f'{"exec " if last else ""}"$TRTEXEC" \\',
        *(f"    {shlex.quote(a)} \\" for a in args),
        '    ${flags[@]+"${flags[@]}"} "$@"',
    ]


def _build_lines(commands: list[tuple[str, str, list[str]]]) -> list[str]:
    """One trtexec command per ``(onnx name, engine name, args)``; with several, each says what it builds."""
    if len(commands) == 1:
        return _exec_lines(commands[0][2])
    lines: list[str] = []
    for i, (onnx_name, engine_name, args) in enumerate(commands):
        what = shlex.quote(f"build_engine.sh: building {engine_name} from {onnx_name}")
        lines += [f"echo {what} >&2", *_exec_lines(args, last=i == len(commands) - 1)]
    return lines


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
    extra_builds: Sequence[tuple[str, str]] = (),
    version_compatible: bool = False,
    hardware_compatible: bool = False,
) -> Path:
    """Write ``build_engine.sh`` beside ``onnx_path`` (atomically, executable) and return its path.

    ``reason`` (why this machine did not build the engine) goes into the script's comment on one line.
    ``extra_builds``: further ``(onnx file name, engine file name)`` pairs beside ``onnx_path`` (e.g.
    ``("model.int8.onnx", "model.int8.engine")``) built after ``engine_name`` with the same input, shapes,
    workspace, optimization level and timing cache, strongly typed like it (never ``--int8``).
    ``version_compatible`` / ``hardware_compatible``: every build gets ``--versionCompatible`` /
    ``--hardwareCompatibilityLevel=ampere+``."""
    onnx_path = Path(onnx_path)
    builds = [(onnx_path.name, engine_name)]
    for onnx_name, extra_engine in extra_builds:
        if Path(onnx_name).name != str(onnx_name) or Path(extra_engine).name != str(extra_engine):
            raise ConfigError(
                f"extra builds are file names beside {onnx_path.name}: {onnx_name}, {extra_engine}"
            )
        builds.append((str(onnx_name), str(extra_engine)))
    names = [engine for _, engine in builds]
    if len(set(names)) != len(names):
        raise ConfigError(f"two builds would write the same engine: {names}")
    commands = [
        (
            onnx_name,
            engine,
            trtexec_args(
                onnx_name,
                batch=batch,
                input_name=input_name,
                input_shape_chw=input_shape_chw,
                workspace_mib=workspace_mib,
                opt_level=opt_level,
                timing_cache_name=timing_cache_name,
                engine_name=engine,
            ),
        )
        for onnx_name, engine in builds
    ]
    compat = _compat_lines(version_compatible, hardware_compatible)
    lines = [*_header(builds, reason), *_FIND_TRTEXEC, *compat, _SAY_FLAGS, *_build_lines(commands)]
    path = onnx_path.parent / SCRIPT_NAME
    atomic_write_text(path, "\n".join(lines) + "\n", executable=True)
    return path
