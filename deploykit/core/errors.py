"""Typed errors. Library code raises these; only the CLI turns them into messages and exit codes."""

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an exception's message (or of a text), stripped of terminal colour
    codes; an exception with an empty message gives its type name, an empty text ``""``."""
    for line in _ANSI.sub("", str(exc)).splitlines():
        if line.strip():
            return line.strip()
    return "" if isinstance(exc, str) else type(exc).__name__


def one_line(text: object) -> str:
    """``text`` with every character that is not printable (line breaks of every kind, tabs, terminal
    escapes) written as its Python escape (``\\n``, ``\\x1b``): a file name or a message can never span
    two lines, nor fake a line of its own (``"x\\nerror: ..."``). Printable text (also non-ASCII) is kept."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def display_path(path: object) -> str:
    """A file name as an error message shows it: one line (:func:`one_line`), whatever its name holds."""
    return one_line(path)


def distinct_prefixes(ours: str, theirs: str, length: int = 12) -> tuple[str, str]:
    """Prefixes of two different hashes that differ: ``length`` characters, or as many more as it takes
    (a message saying ``sha256 0a1b2c3d4e5f`` is not ``sha256 0a1b2c3d4e5f`` would say nothing)."""
    ours, theirs = str(ours), str(theirs)
    n = length
    while n < max(len(ours), len(theirs)) and ours[:n] == theirs[:n]:
        n += 4
    return ours[:n], theirs[:n]


class DeployKitWarning(UserWarning):
    """Something the user should know that does not stop the command (the command line shows each as one
    ``warning:`` line; from Python it is an ordinary :mod:`warnings` warning)."""


class DeployKitError(Exception):
    """Base class of every error deploykit raises on purpose."""

    exit_code = 2


class ConfigError(DeployKitError, ValueError):
    """An invalid model argument or configuration value."""


class UnknownModelError(DeployKitError, ValueError):
    """A model name that is not registered."""


class InputError(DeployKitError, ValueError):
    """Validation inputs that cannot be built: a missing or empty image directory, an unreadable image."""


class ComparisonError(DeployKitError, ValueError):
    """Two sets of outputs that cannot be compared: different shapes, names or empty arrays."""


class ArtifactError(DeployKitError):
    """A missing, unreadable or corrupt artifact (ONNX file, weights file, engine)."""


class WeightsError(DeployKitError):
    """A weights file that cannot be read or does not fit the model."""


class ExportError(DeployKitError):
    """A stage of the export pipeline failed."""


class ParityError(DeployKitError):
    """An artifact does not compute what the PyTorch model computes (within the configured tolerances)."""

    exit_code = 1


class NonFiniteOutputError(DeployKitError):
    """An artifact produced NaN or Inf: like a parity failure, the result cannot be trusted."""

    exit_code = 1


class EngineUnavailableError(DeployKitError):
    """TensorRT or a CUDA GPU is not available on this machine."""

    exit_code = 3
