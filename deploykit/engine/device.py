"""Whether this machine can build and run TensorRT engines: TensorRT 10.3+ (or 11.x) and a CUDA GPU; and the
facts of the device (``deploykit doctor``, ``deploykit bench``): the CUDA driver and runtime, the GPU, and
on a Jetson its model, L4T/JetPack release, power mode and whether its clocks are locked.

``tensorrt`` is imported inside the functions only: importing this module never needs TensorRT or a GPU.
The GPU is found with NVIDIA's ``cuda-python`` (``cuda.bindings.runtime``, what a torch-free device image
has), or with torch where cuda-python is missing. :func:`tensorrt_available` never raises and says why
not in one line; :func:`require_tensorrt` raises that line as :class:`EngineUnavailableError` (exit 3).
The Jetson facts are read below :data:`ROOT` (a test points it at a fake device tree) and through a
command runner that can be replaced (``nvpmodel -q``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import EngineUnavailableError, first_line

#: Every TensorRT name this module uses (:func:`tensorrt_facts` creates a builder);
#: tests/test_engine_api.py checks each against the TensorRT 10.3 and 11.4 bindings.
TRT_API_USED = ("Logger", "WARNING", "Builder")

#: the oldest TensorRT the engine stage supports: 10.3, the TensorRT of JetPack 6 (Jetson Orin)
MIN_TENSORRT = (10, 3)
#: the file system the device facts are read from; read when a function runs (never bound as a default
#: argument), so a test can point it at a fake Jetson tree
ROOT = Path("/")

#: L4T (Jetson Linux) release -> JetPack, exact releases only. From NVIDIA's JetPack archive
#: (https://developer.nvidia.com/embedded/jetpack-archive) and the JetPack 7 release pages (JetPack 7.0 is
#: Jetson Linux 38.2, JetPack 7.1 is 38.4, both Jetson Thor). A release not listed reads as its JetPack
#: major (:data:`JETPACK_MAJOR`): L4T 35.1 was JetPack 5.0.2 and 35.2.1 was 5.1, so a guessed minor would
#: be wrong.
JETPACK_FOR_L4T = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "38.2.0": "7.0",
    "38.4.0": "7.1",
}
#: the JetPack major of each L4T major (32: Jetson Nano/TX2/Xavier, 35: Xavier/Orin, 36: Orin, 38: Thor)
JETPACK_MAJOR = {"32": "4", "35": "5", "36": "6", "38": "7"}
_L4T_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
#: the names of the Jetson GPU's devfreq node under /sys/class/devfreq (17000000.ga10b on Orin, .gv11b on
#: Xavier, .gp10b on TX2; newer L4T names it ...gpu)
_GPU_DEVFREQ = re.compile(r"(^|\.)(ga10b|gv11b|gp10b|gpu)$")


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


def tensorrt_facts() -> dict[str, Any]:
    """``deploykit doctor``: TensorRT's version, whether deploykit supports it, and whether a builder can be
    created here (it needs a working CUDA driver and GPU); ``{"importable": False, "reason": ...}`` without
    TensorRT. Never raises."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or OSError when the TensorRT libraries are missing
        return {"importable": False, "reason": f"{type(exc).__name__}: {first_line(exc)}"}
    version = str(getattr(trt, "__version__", "unknown"))
    facts: dict[str, Any] = {
        "importable": True,
        "version": version,
        "supported": tensorrt_version(version) >= MIN_TENSORRT,
    }
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    except Exception as exc:  # the bindings raise when the factory returns nullptr (no CUDA device)
        builder, facts["builder_error"] = None, f"{type(exc).__name__}: {first_line(exc)}"
    facts["builder"] = builder is not None
    return facts


# ------------------------------------------------------------------------------------------- CUDA
def _cuda_version(number: int) -> str:
    """CUDA's ``1000 * major + 10 * minor`` (``12060``) -> ``"12.6"``."""
    return f"{number // 1000}.{number % 1000 // 10}"


def cuda_facts() -> dict[str, Any]:
    """The CUDA driver and runtime versions through cuda-python (``cudaDriverGetVersion``: 0 when no driver
    is installed; ``cudaRuntimeGetVersion``), ``{"cuda_python": None, "reason": ...}`` without it. Never
    raises."""
    from importlib import metadata

    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        return {
            "cuda_python": None,
            "reason": f"cuda-python is not installed (pip install cuda-python): {exc}",
        }
    facts: dict[str, Any] = {"cuda_python": None}
    for dist in ("cuda-python", "cuda-bindings"):
        try:
            facts["cuda_python"] = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    for key, call in (("driver", "cudaDriverGetVersion"), ("runtime", "cudaRuntimeGetVersion")):
        try:
            err, number = getattr(cudart, call)()
        except Exception as exc:  # a broken CUDA install: say so, do not crash the report
            facts[key], facts[f"{key}_error"] = None, f"{call}: {type(exc).__name__}: {first_line(exc)}"
            continue
        success = err == cudart.cudaError_t.cudaSuccess
        facts[key] = _cuda_version(int(number)) if success and number else None
        if not success:
            name = getattr(err, "name", err)
            facts[f"{key}_error"] = f"{call} failed: {name}"
        elif not number:
            facts[f"{key}_error"] = f"{call} returned 0: no CUDA driver is installed"
    return facts


# ----------------------------------------------------------------------------------------- Jetson
def _root(root: Path | None) -> Path:
    return Path(root) if root is not None else ROOT


def _read(path: Path) -> str | None:
    """A small text file (a device-tree string ends with NUL), or None when it cannot be read."""
    try:
        return path.read_bytes()[:4096].decode(errors="replace").strip("\x00\n\r\t ")
    except OSError:
        return None


def is_jetson(root: Path | None = None) -> bool:
    """A Jetson (L4T) system: it has ``/etc/nv_tegra_release``."""
    return (_root(root) / "etc" / "nv_tegra_release").is_file()


def l4t_release(root: Path | None = None) -> str | None:
    """``"36.4.3"`` from the first line of ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3,
    GCID: ...``), None off a Jetson or when the line is not in that form."""
    text = _read(_root(root) / "etc" / "nv_tegra_release")
    match = _L4T_LINE.search(text or "")
    if not match:
        return None
    parts = [match.group(1), *match.group(2).split(".")]
    return ".".join((parts + ["0", "0"])[:3])


def jetpack_for(l4t: str | None) -> str | None:
    """The JetPack of an L4T release: exact from :data:`JETPACK_FOR_L4T`, else ``"<major>.x"``."""
    if not l4t:
        return None
    if l4t in JETPACK_FOR_L4T:
        return JETPACK_FOR_L4T[l4t]
    major = JETPACK_MAJOR.get(l4t.split(".")[0])
    return f"{major}.x" if major else None


def run_command(argv: list[str], timeout: float = 10.0) -> str | None:
    """A device tool's standard output (``nvpmodel -q``), None when it is not there or fails. JetPack puts
    its tools in ``/usr/sbin`` and ``/usr/bin``, which are not on every user's PATH."""
    exe = shutil.which(argv[0]) or next(
        (str(p) for p in (Path("/usr/sbin") / argv[0], Path("/usr/bin") / argv[0]) if p.is_file()), None
    )
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def parse_nvpmodel(output: str | None) -> tuple[str | None, int | None]:
    """``nvpmodel -q`` -> (mode name, mode id): ``NV Power Mode: MAXN`` then the id on the next line."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = re.match(r"NV Power Mode\s*:\s*(.+)", line)
        if match:
            after = lines[i + 1] if i + 1 < len(lines) else ""
            return match.group(1).strip(), int(after) if after.isdigit() else None
    return None, None


def _min_max(folder: Path, low: str, high: str) -> tuple[int, int] | None:
    values = [_read(folder / low), _read(folder / high)]
    if not all(v and v.isdigit() for v in values):
        return None
    return int(values[0]), int(values[1])


def clocks_locked(root: Path | None = None) -> tuple[bool | None, str]:
    """Whether the CPU and GPU clocks are pinned at their maximum, as ``jetson_clocks`` does by raising
    every clock's minimum frequency to its maximum: every online CPU's cpufreq ``scaling_min_freq ==
    scaling_max_freq`` and the GPU devfreq node's ``min_freq == max_freq``. ``(None, why)`` when they
    cannot be read; the second item says what was found."""
    root = _root(root)
    cpus = []
    for policy in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        if _read(policy.parent / "online") == "0":
            continue
        pair = _min_max(policy, "scaling_min_freq", "scaling_max_freq")
        if pair is not None:
            cpus.append(pair[0] == pair[1])
    gpus = [
        pair[0] == pair[1]
        for node in sorted((root / "sys/class/devfreq").glob("*"))
        if _GPU_DEVFREQ.search(node.name) and (pair := _min_max(node, "min_freq", "max_freq")) is not None
    ]
    if not cpus and not gpus:
        return None, "no readable cpufreq or GPU devfreq min/max frequencies under /sys"
    found = f"CPU {sum(cpus)}/{len(cpus)} locked, GPU " + (
        f"{sum(gpus)}/{len(gpus)} locked" if gpus else "not found"
    )
    if not all(cpus) or not all(gpus):
        return False, found + " (sudo jetson_clocks locks them)"
    if not cpus or not gpus:
        return None, found
    return True, found


@dataclass(frozen=True, kw_only=True)
class JetsonFacts:
    """A Jetson's model, L4T (Jetson Linux) release, JetPack, power mode and whether its clocks are locked
    (``None``: not known; ``clocks`` says why or what was read)."""

    model: str | None
    l4t: str | None
    jetpack: str | None
    power_mode: str | None
    power_mode_id: int | None
    clocks_locked: bool | None
    clocks: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def jetson_facts(
    root: Path | None = None, run: Callable[[list[str]], str | None] | None = None
) -> JetsonFacts | None:
    """The Jetson this runs on, None off a Jetson. ``root``: the file system to read (default
    :data:`ROOT`); ``run``: runs a tool and returns its standard output or None (default
    :func:`run_command`), for ``nvpmodel -q``."""
    root = _root(root)
    if not is_jetson(root):
        return None
    l4t = l4t_release(root)
    mode, mode_id = parse_nvpmodel((run or run_command)(["nvpmodel", "-q"]))
    locked, clocks = clocks_locked(root)
    return JetsonFacts(
        model=_read(root / "proc" / "device-tree" / "model") or None,
        l4t=l4t,
        jetpack=jetpack_for(l4t),
        power_mode=mode,
        power_mode_id=mode_id,
        clocks_locked=locked,
        clocks=clocks,
    )
