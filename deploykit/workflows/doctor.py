"""``deploykit doctor``: what this machine can do, and how the files of an export folder run here.

Each part of the machine is one :class:`Component` — ``python``, ``deploykit``, ``export`` (torch),
``onnxruntime`` (its providers that really run: a session per provider, since ONNX Runtime silently falls back
to the CPU when the CUDA libraries do not match), ``tensorrt`` (and whether a builder can be created),
``cuda`` (cuda-python, driver and runtime), ``gpu``, ``jetson`` (model, L4T, JetPack, power mode, clocks) and
``triton`` — with a status: ``ok``, ``missing``, ``not applicable`` or ``error``. Given a folder, every ONNX
file and engine in it gets a :class:`FileCheck`: whether it runs here, how (the provider; the TensorRT and
GPU, after the compatibility check of :mod:`deploykit.engine.compat` and a real load), why not, and the
command to run next.

Nothing here imports torch or ONNX Runtime at import time; either one missing is reported, never a crash.
The exit code: 0 when every file of the folder runs here (without a folder: when ONNX Runtime or TensorRT
can run a model here), 3 when a part is missing. Prints nothing (``deploykit/cli/doctor.py`` does).
"""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from deploykit.core.artifacts import ENGINE_SUFFIXES, Named, Variant
from deploykit.core.errors import ArtifactError, DeployKitError, first_line
from deploykit.core.io import atomic_write_text
from deploykit.core.record import EngineTarget, read_sidecar
from deploykit.engine import device
from deploykit.engine.compat import engine_compatibility


class Status(Named):
    OK = "ok"
    MISSING = "missing"
    NOT_APPLICABLE = "not applicable"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class Component:
    """One part of the machine: its status, one line saying what it is (or why not), and the details."""

    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "summary": self.summary, **self.details}


@dataclass(frozen=True, kw_only=True)
class FileCheck:
    """One ONNX file or engine of the folder: whether it runs here, how, why not, and what to run next."""

    file: str
    kind: str  # "onnx" or "engine"
    runs: bool
    how: str = ""
    reason: str = ""
    next: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kind": self.kind,
            "runs": self.runs,
            "how": self.how,
            "reason": self.reason,
            "next": self.next,
        }


@dataclass(frozen=True, kw_only=True)
class Probes:
    """What the doctor looks at, each replaceable (tests fake a Jetson): ``root``, the file system of the
    device facts (default :data:`deploykit.engine.device.ROOT`); ``run``, a tool's standard output
    (``nvpmodel -q``); ``triton``, what a Triton server here is (``deploykit doctor`` passes
    :func:`deploykit.serving.install.describe_server`; without it Triton is not looked for)."""

    root: Path | None = None
    run: Callable[[list[str]], str | None] | None = None
    triton: Callable[[], dict[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class DoctorReport:
    components: tuple[Component, ...]
    folder: Path | None = None
    files: tuple[FileCheck, ...] = ()
    next: tuple[str, ...] = ()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    @property
    def exit_code(self) -> int:
        """0 when every file of the folder runs here (without a folder: a model can run here), else 3."""
        if self.folder is not None:
            return 0 if all(f.runs for f in self.files) else 3
        runs_onnx = self.component("onnxruntime").ok
        runs_engines = all(self.component(n).ok for n in ("tensorrt", "cuda", "gpu"))
        return 0 if runs_onnx or runs_engines else 3

    def to_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "components": {c.name: c.to_dict() for c in self.components},
            "folder": None
            if self.folder is None
            else {
                "path": str(self.folder),
                "files": [f.to_dict() for f in self.files],
                "next": list(self.next),
            },
        }


# ----------------------------------------------------------------------------------------- components
def _python() -> Component:
    version = platform.python_version()
    details = {"version": version, "executable": sys.executable, "machine": platform.machine()}
    return Component(
        name="python", status=Status.OK, summary=f"Python {version} ({platform.machine()})", details=details
    )


def _deploykit() -> Component:
    import deploykit

    extras: list[str] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        extras = sorted(set(metadata.metadata("deploykit").get_all("Provides-Extra") or []))
    where = str(Path(deploykit.__file__).parent)
    details = {"version": deploykit.__version__, "location": where, "extras": extras}
    return Component(
        name="deploykit", status=Status.OK, summary=f"deploykit {deploykit.__version__}", details=details
    )


def _export() -> Component:
    """``deploykit export`` needs torch (imported here, inside a try: it may be absent or broken)."""
    try:
        import torch
    except Exception as exc:  # ImportError, or a torch whose libraries do not load
        reason = f"torch is not importable ({type(exc).__name__}: {first_line(exc)}): export needs it"
        return Component(name="export", status=Status.MISSING, summary=reason, details={"torch": None})
    version = str(getattr(torch, "__version__", "unknown"))
    return Component(name="export", status=Status.OK, summary=f"torch {version}", details={"torch": version})


def _onnxruntime() -> Component:
    from deploykit.runtime.providers import probe_providers

    try:
        import onnxruntime as ort

        probes = probe_providers()
    except Exception as exc:
        reason = f"ONNX Runtime is not importable ({type(exc).__name__}: {first_line(exc)})"
        return Component(name="onnxruntime", status=Status.MISSING, summary=reason, details={"version": None})
    version = str(getattr(ort, "__version__", "unknown"))
    runs = [p.provider for p in probes if p.runs]
    details = {
        "version": version,
        "available": [p.provider for p in probes],
        "runs": runs,
        "fails": {p.provider: p.reason for p in probes if not p.runs},
    }
    status = Status.OK if runs else Status.ERROR
    summary = f"onnxruntime {version}: runs on {', '.join(runs) or 'no provider'}"
    if details["fails"]:
        summary += f"; listed but not running: {', '.join(details['fails'])}"
    return Component(name="onnxruntime", status=status, summary=summary, details=details)


def _tensorrt() -> Component:
    facts = device.tensorrt_facts()
    if not facts["importable"]:
        return Component(
            name="tensorrt", status=Status.MISSING, summary=f"TensorRT: {facts['reason']}", details=facts
        )
    version = facts["version"]
    if not facts["supported"]:
        need = ".".join(map(str, device.MIN_TENSORRT))
        summary = f"TensorRT {version}: deploykit needs {need} or newer"
        return Component(name="tensorrt", status=Status.ERROR, summary=summary, details=facts)
    if not facts["builder"]:
        summary = f"TensorRT {version}: no builder can be created here ({facts.get('builder_error', 'None')})"
        return Component(name="tensorrt", status=Status.ERROR, summary=summary, details=facts)
    return Component(
        name="tensorrt", status=Status.OK, summary=f"TensorRT {version}, builder ok", details=facts
    )


def _cuda() -> Component:
    facts = device.cuda_facts()
    if not facts["cuda_python"] and "reason" in facts:
        return Component(name="cuda", status=Status.MISSING, summary=facts["reason"], details=facts)
    if not facts.get("driver"):
        why = facts.get("driver_error", "no CUDA driver")
        status = Status.MISSING if why.endswith("no CUDA driver is installed") else Status.ERROR
        return Component(
            name="cuda", status=status, summary=f"cuda-python {facts['cuda_python']}: {why}", details=facts
        )
    summary = f"CUDA driver {facts['driver']}, runtime {facts.get('runtime') or '?'} (cuda-python {facts['cuda_python']})"
    return Component(name="cuda", status=Status.OK, summary=summary, details=facts)


def _gpu() -> Component:
    try:
        gpu, reason = device.gpu_info()
    except Exception as exc:  # a broken CUDA install
        reason = f"the CUDA runtime failed ({type(exc).__name__}: {first_line(exc)})"
        return Component(name="gpu", status=Status.ERROR, summary=reason)
    if gpu is None:
        return Component(name="gpu", status=Status.MISSING, summary=reason)
    summary = f"{gpu['name']}, compute capability {gpu['compute_capability']}, {gpu['memory_mib']} MiB"
    return Component(name="gpu", status=Status.OK, summary=summary, details=dict(gpu))


def _jetson(probes: Probes) -> Component:
    facts = device.jetson_facts(probes.root, probes.run)
    if facts is None:
        return Component(
            name="jetson", status=Status.NOT_APPLICABLE, summary="not a Jetson (no /etc/nv_tegra_release)"
        )
    clocks = {True: "clocks locked", False: "clocks not locked", None: "clocks unknown"}[facts.clocks_locked]
    mode = facts.power_mode or "power mode unknown"
    summary = f"{facts.model or 'a Jetson'}, L4T {facts.l4t or '?'} (JetPack {facts.jetpack or '?'}), {mode}, {clocks}"
    return Component(name="jetson", status=Status.OK, summary=summary, details=facts.to_dict())


def _triton(probes: Probes) -> Component:
    if probes.triton is None:
        return Component(name="triton", status=Status.NOT_APPLICABLE, summary="not looked for")
    facts = probes.triton()
    if not facts.get("found"):
        return Component(
            name="triton", status=Status.MISSING, summary=str(facts.get("reason")), details=facts
        )
    summary = f"tritonserver {facts.get('version', '(version unknown)')} ({facts.get('source')})"
    return Component(name="triton", status=Status.OK, summary=summary, details=facts)


def machine(probes: Probes | None = None) -> tuple[Component, ...]:
    """Every component of this machine, in a fixed order."""
    probes = probes or Probes()
    return (
        _python(),
        _deploykit(),
        _export(),
        _onnxruntime(),
        _tensorrt(),
        _cuda(),
        _gpu(),
        _jetson(probes),
        _triton(probes),
    )


# --------------------------------------------------------------------------------------------- folder
@dataclass(frozen=True, kw_only=True)
class _Here:
    """What the folder's checks need to know about this machine."""

    components: dict[str, Component]
    jetson: bool

    def ok(self, *names: str) -> bool:
        return all(self.components[n].ok for n in names)

    @property
    def gpu(self) -> dict[str, Any] | None:
        return self.components["gpu"].details or None

    @property
    def tensorrt(self) -> str | None:
        return self.components["tensorrt"].details.get("version")


def _quote(path: Path) -> str:
    return shlex.quote(str(path))


def _install_hint(here: _Here, what: str) -> str:
    """What installs ``what`` ("onnxruntime" or "tensorrt") here: the deploykit extra where it offers one
    (docs/install.md); on a Jetson, JetPack's TensorRT and NVIDIA's onnxruntime-gpu wheel for that JetPack
    (never ``[cpu]``, whose CPU build would replace it)."""
    extras = set(here.components["deploykit"].details.get("extras", []))

    def extra_or(extra: str, fallback: str) -> str:
        return f"pip install 'deploykit[{extra}]'" if extra in extras else fallback

    jetpack = here.components["jetson"].details.get("jetpack") or "6"
    if what == "onnxruntime":
        if here.jetson:
            return f"install NVIDIA's onnxruntime-gpu wheel built for JetPack {jetpack} (not deploykit[cpu])"
        return (
            extra_or("gpu", "pip install onnxruntime-gpu")
            if here.ok("gpu")
            else extra_or("cpu", "pip install onnxruntime")
        )
    if here.ok("tensorrt", "gpu") and not here.ok("cuda"):  # the torch-free runner's CUDA calls
        return extra_or("jetson", "pip install cuda-python") if here.jetson else "pip install cuda-python"
    if here.jetson:
        return "sudo apt-get install nvidia-jetpack"  # TensorRT and its Python bindings come with JetPack
    if not here.ok("gpu"):
        return ""
    driver = device.tensorrt_version(here.components["cuda"].details.get("driver") or "0")
    return extra_or("trt-cu13" if driver >= (13, 0) else "trt-cu12", "pip install tensorrt cuda-python")


def _check_onnx(path: Path, here: _Here) -> FileCheck:
    from deploykit.runtime.ort_runner import OrtRunner

    if not here.ok("onnxruntime"):
        reason = here.components["onnxruntime"].summary
        return FileCheck(
            file=path.name, kind="onnx", runs=False, reason=reason, next=_install_hint(here, "onnxruntime")
        )
    runs = here.components["onnxruntime"].details["runs"]
    cpu_first = Variant.from_file_name(path) is Variant.INT8_CPU  # dynamic quantization: CPU kernels
    wanted = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in runs]
    wanted = sorted(wanted, key=lambda p: p != "CPUExecutionProvider") if cpu_first else wanted
    try:
        runner = OrtRunner(path, providers=wanted or None)
    except DeployKitError as exc:
        return FileCheck(file=path.name, kind="onnx", runs=False, reason=first_line(exc))
    how = f"onnxruntime {runner.providers[0]}"
    return FileCheck(file=path.name, kind="onnx", runs=True, how=how)


def _check_engine(path: Path, here: _Here) -> FileCheck:
    from deploykit.engine.runner import TensorRTRunner

    try:
        target = EngineTarget.from_sidecar(read_sidecar(path))
    except ArtifactError as exc:
        return FileCheck(file=path.name, kind="engine", runs=False, reason=first_line(exc))
    missing = [n for n in ("tensorrt", "gpu", "cuda") if not here.ok(n)]
    if missing:
        reason = "; ".join(here.components[n].summary for n in missing)
        return FileCheck(
            file=path.name, kind="engine", runs=False, reason=reason, next=_install_hint(here, "tensorrt")
        )
    verdict = engine_compatibility(
        target, tensorrt=here.tensorrt, gpu=here.gpu, jetson=here.jetson, engine=path
    )
    if not verdict.ok:
        return FileCheck(
            file=path.name, kind="engine", runs=False, reason=verdict.reason, next=verdict.rebuild
        )
    try:
        runner = TensorRTRunner(path)
    except DeployKitError as exc:
        return FileCheck(
            file=path.name, kind="engine", runs=False, reason=first_line(exc), next=verdict.rebuild
        )
    runner.close()
    gpu = here.gpu or {}
    how = f"TensorRT {here.tensorrt} on {gpu.get('name')} ({gpu.get('compute_capability')})"
    note = (
        verdict.reason
        if verdict.checked
        else "its sidecar records no TensorRT version or GPU; TensorRT loaded it"
    )
    return FileCheck(file=path.name, kind="engine", runs=True, how=how, reason=note)


def _next(folder: Path, checks: list[FileCheck], here: _Here) -> tuple[str, ...]:
    """What to run next: each failing file's command, then an engine build where TensorRT can build one
    and the folder has none for its graph, then a parity check of the best file that runs."""
    commands = [c.next for c in checks if not c.runs and c.next]
    names = {c.file for c in checks}
    built_from = {
        EngineTarget.from_sidecar(_sidecar(folder / c.file)).source_onnx for c in checks if c.kind == "engine"
    }
    built_from |= {c.file.rsplit(".", 1)[0] + ".onnx" for c in checks if c.kind == "engine"}
    if here.ok("tensorrt", "gpu"):
        graph = next((g for g in (Variant.FP16.file, Variant.FP32.file) if g in names), None)
        for source in (graph, Variant.INT8.file):
            if source in names and source not in built_from:
                commands.append(f"deploykit build {_quote(folder / source)}")
    running = [c for c in checks if c.runs]
    best = next((c for c in running if c.kind == "engine"), None) or next(
        (c for g in (Variant.FP16.file, Variant.FP32.file) for c in running if c.file == g), None
    )
    best = best or (running[0] if running else None)
    if best is not None:
        commands.append(f"deploykit validate {_quote(folder / best.file)}")
    return tuple(dict.fromkeys(commands))


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        return read_sidecar(path)
    except ArtifactError:
        return {}


def check_folder(
    folder: str | Path, components: tuple[Component, ...], *, jetson: bool
) -> tuple[tuple[FileCheck, ...], tuple[str, ...]]:
    """Every ONNX file and engine directly in ``folder``: whether it runs here, and what to run next."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"not a folder: {folder}")
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and (p.suffix == ".onnx" or p.suffix in ENGINE_SUFFIXES)
    )
    if not files:
        raise ArtifactError(f"{folder} holds no ONNX file or engine (*.onnx, *.engine)")
    here = _Here(components={c.name: c for c in components}, jetson=jetson)
    checks = [_check_onnx(p, here) if p.suffix == ".onnx" else _check_engine(p, here) for p in files]
    return tuple(checks), _next(folder, checks, here)


def doctor(
    folder: str | Path | None = None, *, json_out: str | Path | None = None, probes: Probes | None = None
) -> DoctorReport:
    """This machine's components and, given an export ``folder``, how each of its files runs here; with
    ``json_out`` the report is also written as JSON (:meth:`DoctorReport.to_dict`)."""
    probes = probes or Probes()
    components = machine(probes)
    if folder is None:
        report = DoctorReport(components=components)
    else:
        jetson = device.is_jetson(probes.root)
        files, commands = check_folder(folder, components, jetson=jetson)
        report = DoctorReport(components=components, folder=Path(folder), files=files, next=commands)
    if json_out:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
