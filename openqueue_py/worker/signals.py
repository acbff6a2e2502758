"""SIGTERM / SIGINT: the first stops the worker gracefully, a second exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from .logging import log, logger


def install(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Route SIGTERM and SIGINT to ``on_signal`` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not Unix
            continue
        installed[sig] = previous

    def restore() -> None:
        for sig, previous in installed.items():
            with suppress(Exception):
                loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)

    return restore


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_now(signum: int, worker_id: str, count: int) -> None:
    """A second signal: leave now. Leases expire and oq_reap hands the jobs back."""
    log(logging.WARNING, "worker.exit_now", worker_id=worker_id, count=count)
    for handler in logging.getLogger().handlers + logger.handlers:
        with suppress(Exception):
            handler.flush()
    with suppress(Exception):
        sys.stderr.flush()
    os._exit(128 + signum)
