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


class MissingPartError(DeployKitError, ImportError):
    """A command needs an optional part of deploykit that is not installed here (PyTorch, ONNX Runtime,
    ...): one line naming the extra that installs it (``export needs PyTorch: pip install
    'deploykit[export]'``), exit 2. Raised by :func:`deploykit.core.parts.require`; an ``ImportError``, so
    code that asks "does this import?" keeps working. ``what`` is the command (or the use) that needs it;
    the command line fills in the command's name when the library did not know it."""

    def __init__(self, *, module: str, label: str, install: str, what: str | None = None) -> None:
        self.module, self.label, self.install, self.what = module, label, install, what
        super().__init__(self.message(), name=module)

    def message(self) -> str:
        if self.what:
            return f"{self.what} needs {self.label}: {self.install}"
        return f"{self.label} is not installed here: {self.install}"

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self):  # keyword-only: pickled (a worker process's error) with its fields
        import functools

        fields = {"module": self.module, "label": self.label, "install": self.install, "what": self.what}
        return functools.partial(MissingPartError, **fields), ()
