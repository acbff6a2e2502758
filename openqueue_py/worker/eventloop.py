"""The event loop of a worker that owns one: uvloop's where it is installed, else asyncio's.

A :class:`~openqueue_py.Worker` (and ``openqueue worker``) runs its core on
an event loop of its own; an :class:`~openqueue_py.AsyncWorker` runs on its
caller's. The core is a few statements per batch of jobs plus their
hand-offs, so the loop's own cost per turn, per timer and per socket wait is
what its Python time is made of: with uvloop (libuv, in C) psycopg's async
execute costs about 65 us of CPU against about 80 with asyncio's loop; the
drains of ``make bench`` gain 0 to 18 % (see bench/README.md).
uvloop is a dependency of the package wherever it builds (CPython, not
Windows); elsewhere asyncio's loop serves, with the same behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def default_loop_factory() -> LoopFactory:
    """``uvloop.new_event_loop`` if uvloop is installed, else ``asyncio.new_event_loop``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], loop_factory: LoopFactory | None = None) -> T:
    """``asyncio.run(main)`` on a loop from ``loop_factory`` (None: :func:`default_loop_factory`)."""
    with asyncio.Runner(loop_factory=loop_factory or default_loop_factory()) as runner:
        return runner.run(main)
