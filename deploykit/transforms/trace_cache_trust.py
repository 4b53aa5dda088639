"""What the trace cache (:mod:`deploykit.transforms.trace_cache`) trusts: entries sealed under this user's
secret, in files and folders of this user's only.

The parity checks cannot prove a cached graph right — a graph that differs only at a batch size they do not
run, or by less than the tolerance, passes them — so an entry is used only if this user's deploykit wrote
it (docs/export.md#trace-cache). An entry is ``MAGIC`` + HMAC-SHA256 + the serialized graph; the MAC
covers the magic, the entry's key (its file name) and the graph, under a per-user secret that is not in the
cache folder: ``DEPLOYKIT_TRACE_CACHE_KEY`` (hex, at least 32 bytes) or the key file
``$XDG_CONFIG_HOME/deploykit/trace-cache.key`` (default ``~/.config/deploykit/``; 32 random bytes, created
0600 in a folder created 0700). The MAC is checked before the graph is parsed. An entry is opened without
following a symbolic link and without blocking (a FIFO), and is used only if it is a regular file owned by
this user, not writable by group or others, at most
:data:`~deploykit.transforms.trace_cache.MAX_ENTRY_BYTES` long, with a valid MAC; the key file is read the
same way and must not be open to group or others at all. The folder is created 0700; one owned by this
user but open to group or others is made 0700, one owned by another user is not used. Every refusal is a
note on the export's :class:`~deploykit.transforms.trace_cache.TraceCacheInfo`, never an error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deploykit.transforms.trace_cache import TraceCacheInfo

#: the first bytes of an entry; the HMAC-SHA256 of MAGIC + key + graph follows, then the graph
MAGIC = b"DKTRACE1"
MAC_BYTES = 32
#: the per-user secret, hex (for a CI that shares its cache between its own jobs: keep it a CI secret)
KEY_ENV = "DEPLOYKIT_TRACE_CACHE_KEY"
KEY_BYTES = 32
_KEY_FILE_LIMIT = 4096


def key_file() -> Path:
    """The file holding this user's secret (used when ``DEPLOYKIT_TRACE_CACHE_KEY`` is not set):
    ``$XDG_CONFIG_HOME/deploykit/trace-cache.key``, ``~/.config/deploykit/`` when that is unset or
    relative (as the XDG spec says: a relative one would put the key wherever an export runs)."""
    root = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(root):
        root = os.path.join(os.path.expanduser("~"), ".config")
    return Path(root) / "deploykit" / "trace-cache.key"


class Refused(Exception):
    """A file that is there but must not be used; the message says why."""


def read_own_file(path: Path, limit: int, forbidden_mode: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file owned by this user, with none of the
    ``forbidden_mode`` bits and at most ``limit`` bytes; None if there is no such path. A symbolic link
    (also a dangling one) is refused, never followed; a FIFO never blocks; at most ``limit + 1`` bytes are
    read. Raises :class:`Refused` (or OSError when the file cannot be opened or read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW on a symbolic link (EMLINK: BSDs)
            raise Refused("a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        if st.st_uid != os.geteuid():
            raise Refused(f"owned by another user (uid {st.st_uid})")
        if st.st_mode & forbidden_mode:
            how = "writable" if st.st_mode & forbidden_mode & 0o022 else "readable"
            raise Refused(f"{how} by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        if st.st_size > limit:
            raise Refused(f"larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(limit + 1 - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Refused(f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each 0700 (an existing one is left as it is)."""
    missing = []
    path = folder
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another export made it meanwhile
            path.mkdir(mode=0o700)
            os.chmod(path, 0o700)  # whatever the umask


def _create_key_file(path: Path) -> None:
    """32 random bytes in ``path``, 0600 (in a folder created 0700). Written to an O_EXCL temp file and
    published with link(): concurrent first exports never read a partial key, and an existing key file is
    never replaced (the loser of a race uses the winner's)."""
    make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: create the key file itself, O_EXCL
            key_fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(key_fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
                f.flush()
                os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def secret_key(info: TraceCacheInfo) -> bytes | None:
    """This user's secret: ``DEPLOYKIT_TRACE_CACHE_KEY`` (hex), else the key file (created on first use).
    None, with a note, when neither can be used: then the cache is off for this export."""
    given = os.environ.get(KEY_ENV, "").strip()
    if given:
        try:
            secret = bytes.fromhex(given)
        except ValueError:
            info.notes.append(f"trace cache off: {KEY_ENV} is not hexadecimal")
            return None
        if len(secret) < KEY_BYTES:
            info.notes.append(f"trace cache off: {KEY_ENV} holds {len(secret)} bytes, fewer than {KEY_BYTES}")
            return None
        return secret
    path = key_file()
    try:
        secret = read_own_file(path, _KEY_FILE_LIMIT, 0o077)
        if secret is None:
            _create_key_file(path)
            secret = read_own_file(path, _KEY_FILE_LIMIT, 0o077)
        if secret is None or len(secret) < KEY_BYTES:
            raise Refused(f"shorter than {KEY_BYTES} bytes")
    except Refused as exc:
        info.notes.append(
            f"trace cache off: key file {path} not used ({exc}; it must be a regular file of this user, "
            "mode 0600; delete it and the next export makes a new one)"
        )
        return None
    except OSError as exc:
        info.notes.append(
            f"trace cache off: key file {path} cannot be read or created ({exc.strerror or exc})"
        )
        return None
    return secret


def _mac(secret: bytes, key: str, payload: bytes) -> bytes:
    return hmac.new(secret, MAGIC + key.encode("ascii") + payload, hashlib.sha256).digest()


def seal(secret: bytes, key: str, payload: bytes) -> bytes:
    """An entry: ``MAGIC`` + HMAC-SHA256(secret, MAGIC + key + payload) + ``payload``."""
    return MAGIC + _mac(secret, key, payload) + payload


def unseal(secret: bytes, key: str, data: bytes) -> bytes:
    """The payload of an entry sealed under ``secret`` for ``key``; raises :class:`Refused` otherwise
    (checked before anything parses the payload)."""
    if not data:
        raise Refused("empty")
    head = len(MAGIC) + MAC_BYTES
    if len(data) < head or not data.startswith(MAGIC):
        raise Refused("no deploykit trace header")
    payload = data[head:]
    if not hmac.compare_digest(data[len(MAGIC) : head], _mac(secret, key, payload)):
        raise Refused("its MAC does not match this user's key")
    return payload


def usable_folder(folder: Path, info: TraceCacheInfo) -> bool:
    """False (with a note) if ``folder`` must not be used: not a folder, owned by another user, or open
    to group or others and not ours to make private. A folder of this user's that group or others may
    read or write is made 0700 (its entries are checked one by one anyway). A missing folder is usable
    (the store creates it)."""
    try:
        st = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError as exc:
        info.notes.append(f"trace cache off: {folder} cannot be read ({exc.strerror or exc})")
        return False
    if not stat.S_ISDIR(st.st_mode):
        info.notes.append(f"trace cache off: {folder} is not a folder")
        return False
    if st.st_uid != os.geteuid():
        info.notes.append(f"trace cache off: {folder} is owned by another user (uid {st.st_uid})")
        return False
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:
            if mode & 0o022:
                info.notes.append(
                    f"trace cache off: {folder} is writable by group or others (mode {mode:04o}) and could "
                    f"not be made private ({exc.strerror or exc})"
                )
                return False
        else:
            info.notes.append(f"{folder} was open to group or others (mode {mode:04o}): made it 0700")
    return True
