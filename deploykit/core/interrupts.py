"""Interrupts abort, always. ``deploykit`` commands turn SIGINT into :class:`KeyboardInterrupt` (exit 130)
and SIGTERM into :class:`Terminated` (exit 143) and remember that a signal came: libraries that wrap
every exception of theirs (torch's exporters, the simplifiers) may turn the interrupt into an ordinary
error, and :func:`reraise_if_interrupted` turns it back before anyone takes it for a failure to work around
(a fallback exporter, a skipped simplifier) and publishes something."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

_received: list[int] = []


class Terminated(BaseException):
    """SIGTERM: a clean abort (like KeyboardInterrupt, not an Exception, so ``except Exception`` passes it)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _interrupt_in_chain(exc: BaseException | None) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt | Terminated):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def interrupt_received() -> int | None:
    """The signal number of the interrupt this process received (under :func:`handle_signals`), if any."""
    return _received[-1] if _received else None


def reraise_if_interrupted(exc: BaseException | None = None) -> None:
    """Raise the interrupt again when one was received or ``exc`` wraps one (its cause chain)."""
    found = _interrupt_in_chain(exc)
    if found is not None:
        raise found
    signum = interrupt_received()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if signum is not None:
        raise Terminated(signum)


def _on_signal(signum: int, frame) -> None:
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt and SIGTERM -> Terminated in this (main) thread, remembered."""
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
