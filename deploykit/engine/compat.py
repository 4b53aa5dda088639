"""Whether an engine can run here, decided from its sidecar before TensorRT's deserialiser sees it, and
whether a build may be asked to be version- or hardware-compatible.

The rules, as NVIDIA documents them (TensorRT 10.x "Version Compatibility" and "Hardware Compatibility",
TensorRT 11.x "Engine Compatibility"; docs/tensorrt.md quotes them):

* **TensorRT version** — "By default, TensorRT engines are compatible only with the version of TensorRT
  used to build them": the recorded version must equal this TensorRT's (TensorRT itself refuses another
  build number: "expecting library version 8.6.1.6 got 8.6.1.4"). An engine built with
  ``BuilderFlag.VERSION_COMPATIBLE`` runs on the TensorRT that built it and later ones ("engines built with
  version compatibility enabled using TensorRT 11.0 will be compatible with TensorRT 11.1 and later 11.x
  versions"), never on an older one. Across majors the guides say a version-compatible engine of the older
  major works ("engines built with TensorRT 10 work with TensorRT 11"), the support matrix says "within
  the same major version": deploykit lets TensorRT decide there, with a note.
* **GPU** — "By default, TensorRT engines are compatible only with the type of device where they were
  built": another compute capability is refused (the same compute capability on another GPU model loads,
  TensorRT warns about performance). An engine built with ``HardwareCompatibilityLevel.AMPERE_PLUS`` runs
  on any GPU of compute capability 8.0 or newer; hardware compatibility "is not supported on NVIDIA DRIVE
  OS or JetPack", so never on a Jetson, and it can only be built on an Ampere-or-newer GPU.

An engine whose sidecar records none of this (built before deploykit recorded it) is left to TensorRT.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import ConfigError
from deploykit.core.record import EngineTarget, HardwareCompatibility

#: the first compute capability of NVIDIA Ampere, the oldest an ``ampere+`` engine runs on
AMPERE = (8, 0)


def version_tuple(version: str | None) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; the leading numeric parts only (``()`` when none)."""
    parts = []
    for part in str(version or "").split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != part:
            break
    return tuple(parts)


def capability(value: str | None) -> tuple[int, int] | None:
    """``"8.7"`` -> ``(8, 7)``; None when not recorded."""
    numbers = version_tuple(value)
    return (numbers[0], numbers[1] if len(numbers) > 1 else 0) if numbers else None


@dataclass(frozen=True, kw_only=True)
class Compatibility:
    """Whether an engine runs here: ``ok``; ``reason``: one line naming both sides when it does not (or a
    note when it does); ``rebuild``: the command that builds it again on this machine; ``checked``: False
    when the sidecar records nothing to check."""

    ok: bool
    reason: str = ""
    rebuild: str = ""
    checked: bool = True

    @property
    def message(self) -> str:
        """The one-line refusal: why, then the command to run."""
        return f"{self.reason}; rebuild it here: {self.rebuild}" if self.rebuild else self.reason


def rebuild_command(target: EngineTarget, engine_path: Path | None) -> str:
    """``deploykit build <the engine's source ONNX beside it>`` with the compatibility flags it was built
    with."""
    folder = engine_path.parent if engine_path is not None else Path(".")
    if target.source_onnx:
        source = folder / target.source_onnx
    elif engine_path is not None:
        source = engine_path.with_suffix(".onnx")
    else:
        source = Path("model.onnx")
    flags = " --version-compatible" if target.version_compatible else ""
    if target.hardware_compatibility is HardwareCompatibility.AMPERE_PLUS:
        flags += " --hardware-compatible"
    return f"deploykit build {shlex.quote(str(source))}{flags}"


def _version_problem(target: EngineTarget, here: str | None) -> tuple[str, str]:
    """``(refusal, note)`` for the TensorRT versions (empty strings when there is nothing to say)."""
    built, have = version_tuple(target.tensorrt), version_tuple(here)
    if not built or not have:
        return "", ""
    if not target.version_compatible:
        common = min(len(built), len(have))
        if built[:common] != have[:common]:
            return (
                "an engine runs only on the TensorRT version that built it (build it --version-compatible)",
                "",
            )
        return "", ""
    if have[: len(built)] < built[: len(have)]:
        return (
            "a version-compatible engine runs on the TensorRT that built it or a newer one, not an older",
            "",
        )
    if have[0] > built[0]:
        return "", (
            f"a version-compatible TensorRT {built[0]} engine on TensorRT {have[0]}: the developer guide says "
            "it runs, the support matrix says within one major version; TensorRT decides when it loads"
        )
    return "", ""


def _gpu_problem(target: EngineTarget, gpu: Mapping[str, Any] | None, jetson: bool) -> tuple[str, str]:
    """``(refusal, note)`` for the GPUs."""
    built = capability(target.compute_capability)
    have = capability((gpu or {}).get("compute_capability"))
    if built is None or have is None:
        return "", ""
    if target.hardware_compatibility is HardwareCompatibility.AMPERE_PLUS:
        if jetson:
            return "a hardware-compatible (ampere+) engine does not run on a Jetson (JetPack)", ""
        if have < AMPERE:
            return (
                "a hardware-compatible (ampere+) engine needs an Ampere or newer GPU (compute capability 8.0+)",
                "",
            )
        return "", ""
    if built != have:
        return (
            "an engine runs only on GPUs of the compute capability that built it (unless --hardware-compatible)",
            "",
        )
    name = (gpu or {}).get("name")
    if target.gpu_name and name and target.gpu_name != name:
        note = f"built on {target.gpu_name}, running on {name} (same compute capability; TensorRT may warn)"
        return "", note
    return "", ""


def _side(tensorrt: str | None, name: str | None, cc: str | None) -> str:
    gpu = f"{name or 'a GPU'} (compute capability {cc})" if cc else (name or "no recorded GPU")
    return f"TensorRT {tensorrt or '(not recorded)'} on {gpu}"


def engine_compatibility(
    sidecar: Mapping[str, Any] | EngineTarget,
    *,
    tensorrt: str | None,
    gpu: Mapping[str, Any] | None,
    jetson: bool = False,
    engine: str | Path | None = None,
) -> Compatibility:
    """Whether the engine whose (checked) sidecar is ``sidecar`` runs with TensorRT ``tensorrt`` on ``gpu``
    (``{"name", "compute_capability"}``, :func:`~deploykit.engine.device.gpu_info`); ``jetson``: this
    machine is a Jetson; ``engine``: the engine's path (the message and the rebuild command name it). A
    side that is not known (no TensorRT, no GPU here, nothing recorded) is not checked."""
    target = sidecar if isinstance(sidecar, EngineTarget) else EngineTarget.from_sidecar(sidecar)
    path = Path(engine) if engine is not None else None
    rebuild = rebuild_command(target, path)
    if not target.recorded:
        return Compatibility(ok=True, reason="its sidecar records no TensorRT version or GPU", checked=False)
    problems, notes = zip(_version_problem(target, tensorrt), _gpu_problem(target, gpu, jetson), strict=True)
    refusals = [p for p in problems if p]
    if not refusals:
        return Compatibility(ok=True, reason="; ".join(n for n in notes if n), rebuild=rebuild)
    what = path.name if path is not None else "the engine"
    built = _side(target.tensorrt, target.gpu_name, target.compute_capability)
    here_gpu = gpu or {}
    here = _side(tensorrt, here_gpu.get("name"), here_gpu.get("compute_capability"))
    if jetson and not target.l4t:
        here += " (a Jetson)"
    reason = f"{what} was built with {built}; this machine has {here}: {' and '.join(refusals)}"
    return Compatibility(ok=False, reason=reason, rebuild=rebuild)


def check_hardware_compatible(*, jetson: bool, gpu: Mapping[str, Any] | None = None) -> None:
    """Refuse, in one line (:class:`ConfigError`, exit 2), a hardware-compatible build on a
    Jetson (JetPack does not support it) or on a GPU older than Ampere (TensorRT builds ``ampere+`` engines
    only on Ampere and newer). ``gpu`` None: the GPU is not known yet (checked again when it is)."""
    if jetson:
        raise ConfigError(
            "--hardware-compatible is not supported on a Jetson: TensorRT's hardware compatibility is for "
            "Ampere-or-newer discrete GPUs, not JetPack; build on the Jetson without it"
        )
    have = capability((gpu or {}).get("compute_capability"))
    if have is not None and have < AMPERE:
        name = (gpu or {}).get("name") or "this GPU"
        raise ConfigError(
            f"--hardware-compatible needs an Ampere or newer GPU to build on (compute capability 8.0+); "
            f"{name} is {have[0]}.{have[1]}"
        )
