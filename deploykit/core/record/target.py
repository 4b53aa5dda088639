"""Where an engine can run, as its sidecar records it: the TensorRT version and GPU that built it, the L4T
release on a Jetson, and whether it was built version-compatible or hardware-compatible.

The builder writes these fields (:meth:`EngineTarget.sidecar_fields`) and every reader takes them from
:meth:`EngineTarget.from_sidecar` (the sidecar checked against ``SIDECAR`` first, by
:func:`~deploykit.core.record.read_sidecar`). An engine built before deploykit recorded them has none:
:attr:`EngineTarget.recorded` is then False and nothing can be said before TensorRT tries to load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploykit.core.artifacts import Named


class HardwareCompatibility(Named):
    """The TensorRT hardware compatibility level an engine was built with (``--hardware-compatible``)."""

    NONE = "none"  # runs on GPUs of the compute capability it was built on
    AMPERE_PLUS = "ampere+"  # HardwareCompatibilityLevel.AMPERE_PLUS: any Ampere-or-newer discrete GPU


@dataclass(frozen=True, kw_only=True)
class EngineTarget:
    """What an engine's sidecar says about where it runs (``None``: not recorded)."""

    tensorrt: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    memory_mib: int | None = None
    l4t: str | None = None
    version_compatible: bool | None = None
    hardware_compatibility: HardwareCompatibility | None = None
    #: the ONNX file the engine was built from (a file name beside the engine)
    source_onnx: str | None = None

    @property
    def recorded(self) -> bool:
        """True when the sidecar records the TensorRT version or the GPU the engine was built with."""
        return bool(self.tensorrt or self.compute_capability)

    @classmethod
    def from_sidecar(cls, sidecar: Mapping[str, Any]) -> EngineTarget:
        """The target of a sidecar already checked against ``SIDECAR`` (``{}``: nothing recorded)."""
        gpu = sidecar.get("gpu") or {}
        level = sidecar.get("hardware_compatibility")
        source = sidecar.get("source_onnx") or {}
        return cls(
            tensorrt=sidecar.get("tensorrt") or None,
            gpu_name=gpu.get("name") or None,
            compute_capability=gpu.get("compute_capability") or None,
            memory_mib=gpu.get("memory_mib"),
            l4t=sidecar.get("l4t") or None,
            version_compatible=sidecar.get("version_compatible"),
            hardware_compatibility=HardwareCompatibility(level) if level else None,
            source_onnx=source.get("file") or None,
        )

    def sidecar_fields(self) -> dict[str, Any]:
        """The sidecar's fields for this target (what :meth:`from_sidecar` reads back; the builder writes
        ``source_onnx`` itself, with its sha256)."""
        gpu = None
        if self.gpu_name or self.compute_capability:
            gpu = {
                "name": self.gpu_name,
                "compute_capability": self.compute_capability,
                "memory_mib": self.memory_mib,
            }
        return {
            "tensorrt": self.tensorrt,
            "gpu": gpu,
            "l4t": self.l4t,
            "version_compatible": bool(self.version_compatible),
            "hardware_compatibility": str(self.hardware_compatibility or HardwareCompatibility.NONE),
        }
