"""Processes that must not outlive the one that started them, and the folders dead processes leave: a
forked child or a server is tied to its parent's life (Linux ``PR_SET_PDEATHSIG``), and a folder named
``PREFIX<pid>-...`` whose process is gone is removed by the next run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

#: prctl option: the signal a process gets when the thread that forked it dies
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """In a forked child: SIGKILL when the parent dies (even by SIGKILL). With ``parent`` (its pid taken
    before the fork), also leave at once when the parent already died between the fork and here."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not Linux: the caller's own cleanup remains
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_folders(parent: Path, prefix: str, *, without_pid: bool = False) -> list[Path]:
    """Remove the folders ``parent/PREFIX<pid>-*`` whose process is gone (and, with ``without_pid``,
    ``PREFIX*`` folders named before the pid was part of the name). Returns what was removed."""
    removed = []
    for path in Path(parent).glob(f"{prefix}*"):
        pid = path.name[len(prefix) :].split("-", 1)[0]
        dead = not pid_alive(int(pid)) if pid.isdigit() else without_pid
        if path.is_dir() and dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
