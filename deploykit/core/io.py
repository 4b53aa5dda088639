"""Atomic artifact writes, writable-directory checks and file fingerprints (torch-free, onnx-free)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from deploykit.core.errors import ArtifactError
from deploykit.core.processes import remove_dead_folders


def sha256_files(paths: Iterable[str | Path]) -> str:
    """sha256 of the files' bytes one after the other (a sharded checkpoint's fingerprint), read in 1 MiB
    chunks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return sha256_files([path])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be created in it (one clear error otherwise)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".deploykit-write-test-"):
            pass
    except OSError as exc:
        raise ArtifactError(
            f"output directory {path} is not writable: cannot create a file in it ({exc.strerror or exc})"
        ) from None
    return path


def current_umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(executable: bool = False) -> int:
    """The mode ``open()`` would give a new file (0644 under umask 022), 0755 for an executable one.

    ``tempfile`` creates files 0600 and directories 0700; an artifact renamed into place from there would
    be unreadable to a Triton server, a container or another user.
    """
    return (0o777 if executable else 0o666) & ~current_umask()


def atomic_write_bytes(
    path: str | Path, data: bytes, executable: bool = False, *, private: bool = False
) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``.

    A failure or interruption leaves the previous ``path`` (if any) untouched and no partial file behind.
    The file gets the mode a plain ``open()`` would give it (see :func:`ordinary_mode`), or 0600 with
    ``private`` (the temp file is created 0600, so it is never readable by others, not even briefly).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    try:
        if not private:
            os.fchmod(fd, ordinary_mode(executable))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, executable: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), executable)


#: prefix of the hidden in-progress folders; the creating process's id follows
STAGING_PREFIX = ".staging-"


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders in ``out_dir`` that exports which died (SIGKILL, power loss) left: their
    process is gone. Returns what was removed."""
    return remove_dead_folders(out_dir, STAGING_PREFIX, without_pid=True)


@contextlib.contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A hidden directory inside ``out_dir`` for in-progress artifacts (named after this process, so a
    later export can tell a dead export's leftovers from a live one's); removed on exit. It gets an
    ordinary directory mode because it may be renamed into place (``rejected/``)."""
    import shutil

    remove_stale_staging(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    tmp.chmod(ordinary_mode(executable=True))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
