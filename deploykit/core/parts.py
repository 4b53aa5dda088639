"""The optional parts of deploykit and the extra that installs each (``pyproject.toml``'s
``[project.optional-dependencies]``, docs/install.md).

The base install is the device runtime: numpy, pillow, click, rich and onnx, no PyTorch and no ONNX
Runtime. PyTorch and the libraries only the export uses come with ``[export]``; ONNX Runtime with ``[cpu]``
(``onnxruntime``) or ``[gpu]`` (``onnxruntime-gpu``; on a Jetson, JetPack's own onnxruntime-gpu wheel).

:func:`require` is the one check a command makes where it first needs a part: a missing part stops it with
one line naming the extra (:class:`~deploykit.core.errors.MissingPartError`, exit 2), never an
``ImportError`` traceback. :func:`missing_part` turns the ``ImportError`` of a known module raised anywhere
below a command into the same line (the command line's net, ``deploykit.cli.app.handle_errors``).
:func:`have` asks without importing."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from deploykit.core.errors import MissingPartError, first_line

#: what installs PyTorch and everything the export uses (with onnxruntime, for its checks)
EXPORT = "pip install 'deploykit[export]'"
#: what installs ONNX Runtime on a device
ORT = "pip install 'deploykit[cpu]' (or [gpu])"


@dataclass(frozen=True, kw_only=True)
class Part:
    """One optional part: how a message names it and the command that installs it."""

    label: str
    install: str


#: top-level module -> the part it belongs to
PARTS: dict[str, Part] = {
    "torch": Part(label="PyTorch", install=EXPORT),
    "onnxscript": Part(label="onnxscript", install=EXPORT),
    "onnxsim": Part(label="onnxsim", install=EXPORT),
    "onnxslim": Part(label="onnxslim", install=EXPORT),
    "onnxconverter_common": Part(label="onnxconverter-common", install=EXPORT),
    "safetensors": Part(label="safetensors", install=EXPORT),
    "onnxruntime": Part(label="ONNX Runtime", install=ORT),
    # a dependency of the base install: missing only when deploykit was installed with --no-deps
    "onnx": Part(label="onnx", install="pip install deploykit (with its dependencies, not --no-deps)"),
    "matplotlib": Part(label="matplotlib", install="pip install 'deploykit[plot]'"),
    "tritonclient": Part(label="Triton's client", install="pip install 'deploykit[serve]'"),
    "timm": Part(label="timm", install="pip install 'deploykit[peers]'"),
    "transformers": Part(label="transformers", install="pip install 'deploykit[peers]'"),
    "sklearn": Part(label="scikit-learn", install="pip install 'deploykit[train]'"),
}
#: the commands of the export side: whatever part they miss, ``[export]`` brings it (onnxruntime too)
EXPORT_SIDE = ("export", "list")


def have(module: str) -> bool:
    """Whether ``module`` is installed here (found, not imported; ``sys.modules[name] = None`` hides it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, what: str | None = None) -> ModuleType:
    """``module`` imported, or :class:`MissingPartError` naming its extra: ``what`` is what needs it (a
    command: ``"export"``, ``"bench hvt_ti_1"``; None: the command line fills in its command). A part that
    is installed but fails to import says so in the same line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        error = missing_part(exc, what)
        if error is None:  # installed, but broken: its own import failed on something else
            part = PARTS.get(module.split(".")[0], Part(label=module, install=f"pip install {module}"))
            label = f"{part.label}, which does not import here ({type(exc).__name__}: {first_line(exc)})"
            error = MissingPartError(module=module, label=label, install=part.install, what=what)
        raise error from None


def missing(module: str, what: str | None = None) -> MissingPartError:
    """The error (or, as ``str``, the reason) saying that the part ``module`` is not installed here."""
    error = missing_part(ModuleNotFoundError(name=module), what)
    if error is None:
        raise ValueError(f"{module!r} is not one of deploykit's optional parts ({', '.join(PARTS)})")
    return error


def missing_part(exc: ImportError, what: str | None = None) -> MissingPartError | None:
    """The :class:`MissingPartError` an ``ImportError`` means — a known part that is not installed — or
    None (an import that failed for another reason: a real error, left as it is). ``what``: the command."""
    if isinstance(exc, MissingPartError):
        if exc.what or not what:
            return exc
        return MissingPartError(
            module=exc.module, label=exc.label, install=_install(exc.install, what), what=what
        )
    name = getattr(exc, "name", None)
    top = name.split(".")[0] if isinstance(name, str) else None
    if not isinstance(exc, ModuleNotFoundError) or top not in PARTS:
        return None
    part = PARTS[top]
    return MissingPartError(module=top, label=part.label, install=_install(part.install, what), what=what)


def _install(install: str, what: str | None) -> str:
    """The export side's commands need ``[export]``, whichever of its parts is missing."""
    return EXPORT if (what or "").split(" ")[0] in EXPORT_SIDE else install
