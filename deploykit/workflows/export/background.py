"""An export's PyTorch work done ahead, in a forked child process, on the core the ONNX export leaves idle.

The ONNX export (dynamo tracing, most of an export's time) keeps one core of two busy. Much of the rest
does not depend on the graph: the PyTorch FP32 reference of the validation images, the rewritten model's
logits on them (the rewrite parity check), and for ``--fp16`` the FP16 check's >= 64 images with their
reference (48 more images than the FP32 stages use) and the range check's PyTorch screen (max |x| over
every op output). :class:`Worker` forks one child that inherits the built models and the FP32 stages'
images (copy-on-write, nothing is pickled), runs the submitted jobs one after the other with **one**
thread, and leaves each result in a file of the staging directory; :func:`collect` gathers results when
a stage needs them. A job the child has not started by then is the main process's to run (one claim
file per job decides who runs it; the main process takes the last ones while the child finishes the
earlier), so the two cores share what is left instead of the main process waiting for the queue.

Only work that overlaps single-threaded phases pays off here: two single-threaded ONNX Runtime runs side
by side are much slower than one alone on two cores, so a range check run in the child while the main
process validated the FP32 graph (two ONNX Runtime threads) ended up slower than running it in the main
process (the measurement is in docs/measured.md).

The jobs run PyTorch and numpy only — no ONNX Runtime session is ever created in the child — so forking
a process that already used ONNX Runtime (``deploykit bench PRESET`` exports in-process) stays safe.

One thread is also what makes the numbers reproducible: a job whose child failed (or where ``os.fork`` is
missing) runs in-process, again with one thread, so the results are bitwise the same either way and
re-exports stay byte-identical.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from deploykit.core.processes import die_with_parent

_HEADER = struct.Struct("<Q")
#: the child's report for a job the main process claimed first (it ran there)
_TAKEN = "taken by the main process"
#: the child's scheduling priority below the main process
NICENESS = 10


@contextmanager
def one_thread():
    """PyTorch with one intra-op thread inside the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fork_available() -> bool:
    """Linux only: macOS's system libraries are not fork-safe once threads exist, Windows has no fork."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def _send(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> Any:
    """The next message, or None at end of file (the other side is gone)."""

    def exactly(n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(fd, left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    header = exactly(_HEADER.size)
    if header is None:
        return None
    data = exactly(_HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)


class Job:
    """A submitted ``fn(context, *args)``; :meth:`result` waits for it."""

    def __init__(self, worker: Worker, number: int, fn: Callable[..., Any], args: tuple) -> None:
        self.worker, self.number, self.fn, self.args = worker, number, fn, args
        self.note: str | None = None  # why it ran in-process, if the child failed it
        self.where = "background"  # or "main process" (claimed first there, or the child failed)

    def result(self) -> Any:
        """The value (computed in-process, with one thread, when the child could not); kept, so a second
        call returns it again."""
        if not hasattr(self, "_value"):
            self._value = self._collect()
        return self._value

    def steal(self) -> bool:
        """Run the job here (one thread) if the child has not started it; False if the child has it (or
        there is no child: :meth:`result` then says why it ran here)."""
        if hasattr(self, "_value"):
            return True
        if self.worker.pid is None or not self.worker._claim(self.number):
            return False
        self.where = "main process"
        self._value = self._run_here()
        return True

    def _run_here(self) -> Any:
        t0 = time.perf_counter()
        with one_thread():
            value = self.fn(self.worker.context, *self.args)
        self.worker.seconds[self.number] = round(time.perf_counter() - t0, 3)
        return value

    def _collect(self) -> Any:
        failure = self.worker._wait(self.number)
        if failure is None:
            path = self.worker._result_path(self.number)
            with open(path, "rb") as f:
                value = pickle.load(f)
            path.unlink()
            return value
        self.note = f"{self.fn.__name__} ran in-process: {failure}"
        self.where = "main process"
        return self._run_here()

    @property
    def seconds(self) -> float | None:
        """How long the job ran (in the child, or in-process), once its result is in."""
        return self.worker.seconds.get(self.number)


class Worker:
    """One forked child running submitted jobs in submission order (see the module doc). ``context`` is
    handed to every job as its first argument; the child inherits it through the fork."""

    def __init__(self, workdir: Path, context: Any) -> None:
        self.workdir, self.context = Path(workdir), context
        self.pid: int | None = None
        self.failure: str | None = None  # why the child is not there
        self._jobs = 0
        self._done: dict[int, str | None] = {}
        self.seconds: dict[int, float] = {}  # job number -> seconds the child spent on it
        if not fork_available():
            self.failure = "no os.fork on this platform"
            return
        jobs_r, jobs_w = os.pipe()
        done_r, done_w = os.pipe()
        parent = os.getpid()
        try:
            with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as exc:
            for fd in (jobs_r, jobs_w, done_r, done_w):
                os.close(fd)
            self.failure = f"fork failed ({exc})"
            return
        if pid == 0:
            die_with_parent(parent)  # never outlives the export or writes into its staging folder after it
            os.close(jobs_w)
            os.close(done_r)
            self._serve(jobs_r, done_w)  # never returns
        os.close(jobs_r)
        os.close(done_w)
        self.pid, self._jobs_w, self._done_r = pid, jobs_w, done_r

    def _result_path(self, number: int) -> Path:
        return self.workdir / f".background-job-{number}.pickle"

    def _claim(self, number: int) -> bool:
        """Whoever creates job ``number``'s claim file first (the child or the main process) runs it."""
        try:
            os.close(os.open(self._result_path(number).with_suffix(".claim"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def _serve(self, jobs: int, done: int) -> None:
        """The child: run jobs until the parent closes the pipe, then leave without the parent's cleanup."""
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills us
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            torch.set_num_threads(1)
            os.nice(NICENESS)  # the main process's critical path goes first when both want a core
            while (message := _receive(jobs)) is not None:
                number, fn, args = message
                if not self._claim(number):
                    _send(done, (number, _TAKEN, 0.0))
                    continue
                t0 = time.perf_counter()
                try:
                    value = fn(self.context, *args)
                    tmp = self._result_path(number).with_suffix(".tmp")
                    with open(tmp, "wb") as f:
                        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
                    os.replace(tmp, self._result_path(number))
                    _send(done, (number, None, time.perf_counter() - t0))
                except Exception as exc:  # reported to the parent, which runs the job itself
                    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
                    _send(done, (number, last, time.perf_counter() - t0))
            code = 0
        finally:
            os._exit(code)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue ``fn(context, *args)``; ``fn`` must be a module-level function (it is pickled by name)."""
        self._jobs += 1
        job = Job(self, self._jobs, fn, args)
        if self.pid is not None:
            try:
                _send(self._jobs_w, (job.number, fn, args))
            except OSError as exc:  # the child is gone
                self._done[job.number] = f"the background process is gone ({exc})"
        return job

    def _wait(self, number: int) -> str | None:
        """None when job ``number`` succeeded in the child, otherwise why not (a job the child reported
        before it ended still counts)."""
        while number not in self._done:
            if self.pid is None:
                return self.failure
            message = _receive(self._done_r)
            if message is None:
                code = self._reap()
                return f"the background process ended (exit {code}) before finishing"
            if message[1] != _TAKEN:
                self._done[message[0]] = message[1]
                self.seconds[message[0]] = round(message[2], 3)
        return self._done.pop(number)

    def _reap(self) -> int | None:
        if self.pid is None:
            return None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        os.close(self._done_r)
        os.close(self._jobs_w)
        self.failure = "the background process ended"
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Kill and reap the child (its jobs are collected, or the export failed or was interrupted) and
        delete the results no job collected."""
        if self.pid is not None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()
        for number in range(1, self._jobs + 1):
            for suffix in (".pickle", ".tmp", ".claim"):
                self._result_path(number).with_suffix(suffix).unlink(missing_ok=True)


def collect(*jobs: Job) -> list[Any]:
    """The results of ``jobs`` (in submission order). The main process first runs, last first, those
    the child has not started, while the child works through the earlier ones; then it waits for the
    child's."""
    for job in reversed(jobs):
        if not job.steal():
            break
    return [job.result() for job in jobs]
