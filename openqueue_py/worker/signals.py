"""SIGTERM / SIGINT: the first stops the worker gracefully; a second gives the signal back.

The second signal restores the handlers that were in place before run()
(the host application's, or Python's defaults) and delivers the signal to
them again, in the main thread: with Python's defaults, SIGINT raises
``KeyboardInterrupt`` (so the host's ``finally`` blocks run) and SIGTERM
ends the process as it would have without a worker. The worker never calls
``os._exit``. In-flight jobs are abandoned; their leases expire and the jobs
come back.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .logging import log


class Signals:
    """The worker's handlers for SIGTERM and SIGINT, and how to put the previous ones back."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> None:
        self._loop = loop
        self._installed: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not Unix
                continue
            self._installed[sig] = previous

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        installed, self._installed = self._installed, {}
        for sig, previous in installed.items():
            with suppress(Exception):
                self._loop.remove_signal_handler(sig)
            if previous is not None:
                with suppress(Exception):
                    signal.signal(sig, previous)

    def redeliver(self, signum: int, worker_id: str, count: int) -> None:
        """A second signal: restore the previous handlers and deliver it to them, in this thread."""
        log(logging.WARNING, "worker.exit_now", worker_id=worker_id, count=count, reason=signal_name(signum))
        self.restore()
        signal.raise_signal(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
