"""How handlers are invoked: the only difference between Worker and AsyncWorker.

Both executors keep ``concurrency`` long-lived slots that pull jobs from one
queue, instead of a task, a future and a thread-pool hand-off per job:

* :class:`ThreadExecutor`: one daemon thread per slot, fed through a
  ``queue.SimpleQueue``. Finished jobs are collected in a deque and handed
  back to the event loop with one ``call_soon_threadsafe`` per burst, not one
  per job. The threads are daemons: a process whose worker stopped (grace
  expired) exits without waiting for a handler that never returns.
* :class:`AsyncExecutor`: one task per slot, fed through an ``asyncio.Queue``.

Each calls ``on_done(run, value, failure, ended)`` on the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .jobs import Run
from .logging import enabled, log

OnDone = Callable[[Run, Any, BaseException | None, float], None]


def is_async_callable(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def _log_started(run: Run, worker_id: str) -> None:
    if enabled(logging.DEBUG):
        log(logging.DEBUG, "job.started", worker_id=worker_id, **run.log_fields())


class ThreadExecutor:
    """Plain functions on ``concurrency`` slot threads."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._threads: list[threading.Thread] = []

    def start(
        self,
        handlers: Mapping[str, Callable[..., Any]],
        on_done: OnDone,
        worker_id: str,
    ) -> None:
        self._handlers = handlers
        self._on_done = on_done
        self._worker_id = worker_id
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()
        self._queue: queue.SimpleQueue[Run | None] = queue.SimpleQueue()
        self._done: deque[tuple[Run, Any, BaseException | None, float]] = deque()
        self._signalled = False
        self._closed = False
        self._threads = [
            threading.Thread(target=self._slot, name=f"openqueue-worker_{i}", daemon=True)
            for i in range(self._concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, run: Run) -> None:
        self._queue.put(run)

    def _slot(self) -> None:
        get, done, handlers = self._queue.get, self._done, self._handlers
        while True:
            run = get()
            if run is None or self._closed:
                return
            run.started = time.monotonic()
            _log_started(run, self._worker_id)
            value: Any = None
            failure: BaseException | None = None
            try:
                value = self._context.copy().run(handlers[run.job.queue_name], run.job)
            except BaseException as exc:
                failure = exc
            done.append((run, value, failure, time.monotonic()))
            # One wake-up of the loop per burst: _deliver clears the flag before
            # it empties the deque, so an append after that always signals again.
            if not self._signalled:
                self._signalled = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: run() is over
                    return

    def _deliver(self) -> None:
        self._signalled = False
        done, on_done = self._done, self._on_done
        while done:
            on_done(*done.popleft())

    def cancel(self, run: Run) -> None:
        """The lease is gone: a thread cannot be interrupted; ``job.lease_lost`` tells the handler."""

    async def close(self) -> None:
        """Stop the slots; a handler still running is not waited for (its result is dropped)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        self._threads = []


class AsyncExecutor:
    """``async def`` handlers on ``concurrency`` slot tasks of the worker's event loop."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._tasks: list[asyncio.Task[None]] = []

    def start(
        self,
        handlers: Mapping[str, Callable[..., Any]],
        on_done: OnDone,
        worker_id: str,
    ) -> None:
        self._handlers = handlers
        self._on_done = on_done
        self._worker_id = worker_id
        self._queue: asyncio.Queue[Run] = asyncio.Queue()
        self._running: dict[Run, asyncio.Task[None]] = {}
        self._cancelled: set[Run] = set()
        self._tasks = [
            asyncio.create_task(self._slot(), name=f"openqueue-slot-{i}") for i in range(self._concurrency)
        ]

    def submit(self, run: Run) -> None:
        self._queue.put_nowait(run)

    async def _slot(self) -> None:
        get, handlers = self._queue.get, self._handlers
        while True:
            run = await get()
            run.started = time.monotonic()
            _log_started(run, self._worker_id)
            value: Any = None
            failure: BaseException | None = None
            current = asyncio.current_task()
            assert current is not None
            self._running[run] = current
            try:
                value = await handlers[run.job.queue_name](run.job)
            except asyncio.CancelledError as exc:
                if run in self._cancelled:  # cancel(): the lease is gone, the slot goes on
                    current.uncancel()
                if current.cancelling():
                    raise
                failure = exc  # the handler cancelled itself: a failure like any other
            except BaseException as exc:
                failure = exc
            finally:
                del self._running[run]
                self._cancelled.discard(run)
            self._on_done(run, value, failure, time.monotonic())

    def cancel(self, run: Run) -> None:
        """The lease is gone: cancel the handler (it gets CancelledError), not the slot."""
        task = self._running.get(run)
        if task is not None and run not in self._cancelled:
            self._cancelled.add(run)
            task.cancel()

    async def close(self) -> None:
        """Cancel the slots (and the handlers they run)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Executor = ThreadExecutor | AsyncExecutor
