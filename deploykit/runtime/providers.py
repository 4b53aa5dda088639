"""Which ONNX Runtime execution providers really run here.

``onnxruntime.get_available_providers()`` lists what the wheel was built with, not what loads: when the CUDA
or TensorRT libraries do not match, ONNX Runtime logs an error and silently runs the session on the CPU. A
provider counts as working only when a session opened with that provider alone still has it first in
``session.get_providers()`` and runs a one-node graph. The graph is shipped serialized (:data:`PROBE_MODEL`:
``y = x + x`` on a float[1], opset 13, IR version 7, what every ONNX Runtime since 1.8 reads), so the probe
needs neither onnx nor torch; ``tests/test_doctor.py`` rebuilds it with onnx and checks it is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.core.errors import first_line

#: ``Add(x, x) -> y`` on a float[1] (opset 13, IR 7, producer "deploykit"), serialized
PROBE_MODEL = (
    b'\x08\x07\x12\tdeploykit:9\n\x0e\n\x01x\n\x01x\x12\x01y"\x03Add\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01'
    b"\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)
#: the providers deploykit runs ONNX graphs on, best first (the TensorRT execution provider builds its own
#: engines; deploykit predict asks for it explicitly, never by default)
PREFERRED = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True, kw_only=True)
class ProviderProbe:
    """One provider: ``runs`` when a session on it alone keeps it and computes; ``reason`` why not (or the
    provider ONNX Runtime fell back to)."""

    provider: str
    runs: bool
    reason: str = ""


def probe_provider(provider: str) -> ProviderProbe:
    """Open a session on :data:`PROBE_MODEL` with ``provider`` only and run it once; never raises (an
    ONNX Runtime that is not installed raises ImportError: the caller's to report)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is reported here, in one line
    try:
        session = ort.InferenceSession(PROBE_MODEL, options, providers=[provider])
        used = session.get_providers()
        if not used or used[0] != provider:
            fallback = used[0] if used else "no provider"
            return ProviderProbe(
                provider=provider,
                runs=False,
                reason=f"ONNX Runtime fell back to {fallback} (its libraries did not load)",
            )
        out = session.run(None, {"x": np.array([1.5], np.float32)})[0]
    except Exception as exc:
        return ProviderProbe(provider=provider, runs=False, reason=f"{type(exc).__name__}: {first_line(exc)}")
    if float(out[0]) != 3.0:
        return ProviderProbe(provider=provider, runs=False, reason=f"computed {float(out[0])} for 1.5 + 1.5")
    return ProviderProbe(provider=provider, runs=True)


def probe_providers() -> list[ProviderProbe]:
    """Every provider this ONNX Runtime lists, probed (ImportError without ONNX Runtime)."""
    import onnxruntime as ort

    return [probe_provider(p) for p in ort.get_available_providers()]
