"""Whether this machine can build and run TensorRT engines: TensorRT 10.3+ (or 11.x) and a CUDA GPU.

``tensorrt`` is imported inside the functions only: importing this module never needs TensorRT or a GPU.
The GPU is found with NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``, what a torch-free device image
has), or with torch where cuda-python is missing. :func:`tensorrt_available` never raises and says why
not in one line; :func:`require_tensorrt` raises that line as :class:`EngineUnavailableError` (exit 3).
"""

from __future__ import annotations

from typing import Any

from deploykit.core.errors import EngineUnavailableError, first_line

#: the oldest TensorRT the engine stage supports: 10.3, the TensorRT of JetPack 6 (Jetson Orin)
MIN_TENSORRT = (10, 3)


def tensorrt_version(version: str) -> tuple[int, int]:
    """``"10.3.0.26"`` -> ``(10, 3)``; ``(0, 0)`` when the string is not a version."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def gpu_info() -> tuple[dict[str, Any] | None, str]:
    """``({"name", "compute_capability", "memory_mib"}, "")`` for GPU 0, or ``(None, <one-line reason>)``.

    Asks the CUDA runtime through cuda-python (what a torch-free device image has); falls back to torch."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = None
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        if err != cudart.cudaError_t.cudaSuccess or not count:
            detail = cudart.cudaGetErrorString(err)[1].decode() if err else "0 devices"
            return None, f"no CUDA GPU is visible (cudaGetDeviceCount: {detail})"
        err, props = cudart.cudaGetDeviceProperties(0)
        if err != cudart.cudaError_t.cudaSuccess:
            return None, f"cannot read the GPU's properties (cudaGetDeviceProperties: {err})"
        name = (
            props.name.decode(errors="replace").rstrip("\x00")
            if isinstance(props.name, bytes)
            else props.name
        )
        return {
            "name": str(name),
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_mib": int(props.totalGlobalMem) >> 20,
        }, ""
    try:
        import torch
    except ImportError:
        return None, "neither cuda-python nor torch is installed to find the GPU (pip install cuda-python)"
    if not torch.cuda.is_available():
        return None, "no CUDA GPU is visible (torch.cuda.is_available())"
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_mib": props.total_memory >> 20,
    }, ""


def tensorrt_available() -> tuple[bool, str]:
    """``(True, "TensorRT 10.3.0 on <GPU>")`` or ``(False, <one-line reason>)``; never raises."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when the TensorRT libraries are missing
        detail = first_line(exc)
        return False, f"TensorRT is not importable ({type(exc).__name__}: {detail})"
    version = str(getattr(trt, "__version__", "unknown"))
    if tensorrt_version(version) < MIN_TENSORRT:
        need = ".".join(map(str, MIN_TENSORRT))
        return False, f"TensorRT {version} is installed; the engine stage needs TensorRT {need} or newer"
    try:
        gpu, reason = gpu_info()
    except Exception as exc:  # a broken CUDA install must not crash an export that can skip the stage
        gpu, reason = None, f"the CUDA runtime failed ({type(exc).__name__}: {first_line(exc)})"
    if gpu is None:
        return False, f"TensorRT {version} is installed but {reason}"
    return True, f"TensorRT {version} on {gpu['name']}"


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`EngineUnavailableError` (exit code 3) with a one-line reason."""
    ok, reason = tensorrt_available()
    if not ok:
        raise EngineUnavailableError(reason)
    import tensorrt as trt

    return trt
