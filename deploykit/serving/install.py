"""Finding a Triton server to run: a ``tritonserver`` on ``PATH`` (the NGC container, a Triton install) or,
else, the one shipped in the ``nvidia-pytriton`` wheel (extra ``[serve]``; Python backend only), and the
environment it runs in.

The wheel's server needs wiring that pytriton normally does itself (all of it measured on these machines):

* a backend directory with ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the Python
  backend stub built for the running Python (copied to a temporary directory by
  :class:`~deploykit.serving.server.TritonServer`; the wheel is not modified);
* ``LD_LIBRARY_PATH`` with the wheel's ``nvidia_pytriton.libs`` and this Python's ``LIBDIR`` (the stub
  links ``libpython3.X.so``: without it the stub takes a distribution's libpython or cannot start);
* ``PATH`` starting with this environment's ``bin``: the stub finds the environment's packages
  (numpy, onnxruntime, deploykit) through the ``python3`` it finds there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit.core.errors import DeployKitError


class ServerUnavailableError(DeployKitError):
    """No Triton server can run here (no tritonserver on PATH and no nvidia-pytriton)."""

    exit_code = 3


@dataclass(frozen=True, kw_only=True)
class ServerInstall:
    binary: Path
    source: str  # "PATH" or "nvidia-pytriton"
    backend_files: Path | None = None  # pytriton: backends/python
    stub: Path | None = None  # pytriton: the stub for this Python
    libs: Path | None = None  # pytriton: nvidia_pytriton.libs
    caches: Path | None = None


def find_server() -> ServerInstall:
    """``tritonserver`` on PATH, else the one in nvidia-pytriton (found without importing pytriton)."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerInstall(binary=Path(on_path), source="PATH")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailableError(
            "no Triton server here: no tritonserver on PATH and nvidia-pytriton is not installed "
            "(pip install 'deploykit[serve]', or run inside the NGC tritonserver container)"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = ServerInstall(
        binary=root / "bin" / "tritonserver",
        source="nvidia-pytriton",
        backend_files=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=pkg.parent / "nvidia_pytriton.libs",
        caches=root / "caches",
    )
    for what in ("binary", "backend_files", "stub", "libs"):
        if not getattr(install, what).exists():
            raise ServerUnavailableError(
                f"nvidia-pytriton has no {what.replace('_', ' ')} for Python {version} ({getattr(install, what)})"
            )
    return install


def describe_server() -> dict[str, Any]:
    """``deploykit doctor``: the Triton server :func:`find_server` finds (``found``, ``binary``, ``source``,
    ``version`` where known: the NGC container's ``TRITON_SERVER_VERSION`` / ``NVIDIA_TRITON_SERVER_VERSION``,
    or the nvidia-pytriton wheel's version, which has only the Python backend) or ``found: False`` with the
    reason. Nothing is started. Never raises."""
    try:
        install = find_server()
    except ServerUnavailableError as exc:
        return {"found": False, "reason": str(exc)}
    facts: dict[str, Any] = {"found": True, "binary": str(install.binary), "source": install.source}
    if install.source == "nvidia-pytriton":
        with contextlib.suppress(metadata.PackageNotFoundError):
            facts["version"] = f"nvidia-pytriton {metadata.version('nvidia-pytriton')}"
        facts["backends"] = ["python"]
    else:
        for var in ("TRITON_SERVER_VERSION", "NVIDIA_TRITON_SERVER_VERSION"):
            if os.environ.get(var):
                facts["version"] = os.environ[var]
                break
    return facts


def server_env(install: ServerInstall) -> dict[str, str]:
    env = dict(os.environ)
    if install.source != "nvidia-pytriton":
        return env
    libs = [str(install.libs)]
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so*")):
        libs.append(libdir)
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    env["PATH"] = (
        os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    )
    return env
