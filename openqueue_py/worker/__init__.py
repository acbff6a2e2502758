"""The worker runtime: lease jobs, run handlers, heartbeat, ack or nack.

:class:`Worker` runs plain functions on slot threads; :class:`AsyncWorker`
runs ``async def`` handlers on the event loop. Both are thin faces over one
asyncio scheduling core (:mod:`._core`), split along its seams: the fetcher
(lease loop), the executor (slots), the completer (batched acks, nacks), the
heartbeat loop, the listener, maintenance (reaping) and signals. They differ
only in their executor.

Logging goes to the ``openqueue.worker`` logger (:mod:`.logging`); the
events, their levels and meanings are listed in README.md ("Logging").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .._connect import DEFAULT_PREPARE_THRESHOLD
from ..errors import WorkerError
from ..models import Job
from ._core import Core
from .control import Fail, Retry
from .eventloop import LoopFactory
from .eventloop import run as run_loop
from .executor import AsyncExecutor, Executor, ThreadExecutor, is_async_callable
from .logging import LogFormatter

__all__ = ["AsyncWorker", "Fail", "LogFormatter", "Retry", "Worker"]

# The CLI's name for it.
_is_async_callable = is_async_callable


class _Face:
    """What Worker and AsyncWorker share: construction, stop() and a few properties."""

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Callable[[Job], Any]],
        *,
        concurrency: int = 4,
        poll_interval: float = 5.0,
        lease_seconds: int | None = None,
        grace_period: float = 30.0,
        reap_interval: float | None = 5.0,
        batch_size: int | None = None,
        prefetch: int = 0,
        durable_leases: bool = True,
        worker_id: str | None = None,
        handle_signals: bool = True,
        listen_dsn: str | None = None,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
        metrics_port: int | None = None,
        tick_interval: float = 1.0,
    ) -> None:
        """Configure the worker; nothing connects before run().

        ``dsn``: the PostgreSQL connection string (OpenQueue installed).
        ``handlers``: queue name -> handler; the handler is called with the
        :class:`Job`.
        ``concurrency`` (4): how many jobs run at the same time.
        ``poll_interval`` (5.0 s): the longest sleep without a notification;
        the worker also wakes for the earliest future ``run_at`` it knows of.
        ``lease_seconds`` (None: the queue's setting, 30 s by default): the
        lease asked for by ``oq_lease`` and ``oq_heartbeat``; heartbeats come
        every third of the lease.
        ``grace_period`` (30.0 s): how long a stop waits for in-flight jobs.
        ``reap_interval`` (5.0 s; None: never): how often ``oq_reap()`` runs.
        ``batch_size`` (None: every free slot): the most jobs one ``oq_lease``
        call asks for; never more than the free capacity.
        ``prefetch`` (0: lease only for idle slots): how many jobs beyond
        ``concurrency`` may be leased ahead while every slot is busy, so that
        a slot that finishes finds its next job waiting instead of a round
        trip. They hold leases and count as in flight: a graceful stop runs
        them too.
        ``durable_leases`` (True): every lease waits for the WAL flush, like
        acks, nacks and heartbeats. False commits leases with
        ``synchronous_commit = off`` for that one transaction, which saves an
        fsync between a job becoming due and its handler starting; but a
        database crash may then forget a lease of its last moments: the job
        is leasable again, the forgotten token's ack answers false, and the
        handler runs twice under one attempt number (the attempt is not
        counted). Delivery stays at-least-once either way.
        ``worker_id`` (``host:pid:random``): stored as the jobs' ``leased_by``.
        ``handle_signals`` (True): when run() is in the main thread, SIGTERM and
        SIGINT stop the worker gracefully; a second signal restores the
        handlers that were there before and delivers the signal to them in
        the main thread (Python's defaults: ``KeyboardInterrupt`` for SIGINT,
        so the caller's ``finally`` blocks run); the abandoned jobs' leases
        expire and they come back.

        ``listen_dsn`` (None: ``dsn``): where the LISTEN connection goes. Behind
        a transaction pooler (PgBouncer), give ``dsn`` the pooler and
        ``listen_dsn`` PostgreSQL itself: LISTEN needs a session of its own.
        ``prepare_threshold`` (5, psycopg's default): executions of a statement
        on a connection before psycopg prepares it on the server; None never
        prepares, which a pooler without prepared-statement support (PgBouncer
        before 1.21 in transaction mode) needs. Applies to ``dsn`` only.
        ``metrics_port`` (None: off): while run() runs, serve this worker's
        Prometheus metrics over HTTP on that port, all interfaces (0: a free
        port, see :attr:`metrics_port`): handler durations as a histogram and
        jobs processed, by queue and outcome (:mod:`openqueue_py.metrics`;
        needs the ``dashboard`` extra).
        ``tick_interval`` (1.0 s; 0: never): how often ``oq_tick()`` fires due
        recurring schedules; one worker at a time does it (an advisory lock),
        and concurrent calls are safe anyway.

        Raises :class:`WorkerError` for a configuration that cannot work.
        """
        if isinstance(handlers, Mapping):
            for queue, handler in handlers.items():
                if callable(handler):
                    self._check_handler(queue, handler)
        self._core = Core(
            dsn=dsn,
            handlers=handlers,
            executor=self._executor(concurrency if isinstance(concurrency, int) and concurrency > 0 else 1),
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            grace_period=grace_period,
            reap_interval=reap_interval,
            batch_size=batch_size,
            prefetch=prefetch,
            durable_leases=durable_leases,
            worker_id=worker_id,
            handle_signals=handle_signals,
            listen_dsn=listen_dsn,
            prepare_threshold=prepare_threshold,
            metrics_port=metrics_port,
            tick_interval=tick_interval,
        )

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        raise NotImplementedError

    def _executor(self, concurrency: int) -> Executor:
        raise NotImplementedError

    @property
    def worker_id(self) -> str:
        """The id stored as ``leased_by`` on the jobs this worker leases."""
        return self._core.worker_id

    @property
    def metrics_port(self) -> int | None:
        """The port this worker's metrics are served on while it runs (None: not serving)."""
        metrics = self._core.metrics
        return metrics.port if metrics is not None else None

    @property
    def queues(self) -> list[str]:
        """The queues this worker handles."""
        return list(self._core.queues)

    def stop(self, force: bool = False) -> None:
        """Stop leasing and let in-flight jobs finish (within grace_period).

        Returns at once; thread-safe; before run() it makes run() return
        at once. ``force=True`` abandons in-flight jobs instead: run() returns
        without waiting for them (a sync handler's thread keeps running, its
        result is dropped); their leases expire and the jobs come back.
        """
        self._core.stop(force)


class Worker(_Face):
    """Run plain-function handlers on ``concurrency`` threads.

    ``Worker(dsn, {"emails": send}, concurrency=4).run()``; the arguments are
    described on ``__init__``. A coroutine function is refused (use
    :class:`AsyncWorker`).
    """

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        if is_async_callable(handler):
            raise WorkerError(f"the handler for queue {queue!r} is an async function: use AsyncWorker")

    def _executor(self, concurrency: int) -> ThreadExecutor:
        return ThreadExecutor(concurrency)

    def run(self, *, loop_factory: LoopFactory | None = None) -> None:
        """Process jobs until stopped; return once in-flight jobs are done (or grace expired).

        Runs an event loop of its own, so it works in any thread that has none
        running (signal handlers only in the main thread): uvloop's where it
        is installed (a dependency of the package on CPython outside
        Windows), else asyncio's; ``loop_factory`` (as for
        ``asyncio.Runner``) chooses another, e.g. ``asyncio.new_event_loop``.
        The handlers run on the slot threads either way. Errors a retry may
        cure (a lost connection, a restart, a serialization failure) never end
        it. What no retry cures ends it with one line: at startup, within
        ``connect_timeout``, :class:`ConnectionFailed` (host, port, role,
        password, database), :class:`NotInstalled` (no schema, or an older
        one), :class:`SchemaTooNew`, :class:`WorkerError` (a role without the
        worker's privileges); later, after in-flight jobs have finished,
        :class:`NotInstalled` or :class:`WorkerError` (the schema dropped, a
        privilege revoked, a configuration the database refuses).
        """
        run_loop(self._core.run(), loop_factory)


class AsyncWorker(_Face):
    """Run ``async def`` handlers as tasks on the caller's event loop.

    ``await AsyncWorker(dsn, {"emails": send}, concurrency=50).run()``; the
    arguments are described on ``__init__``. A plain function is refused (use
    :class:`Worker`).
    """

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        if not is_async_callable(handler):
            raise WorkerError(f"the handler for queue {queue!r} is not an async function: use Worker")

    def _executor(self, concurrency: int) -> AsyncExecutor:
        return AsyncExecutor(concurrency)

    async def run(self) -> None:
        """Process jobs until stopped; return once in-flight jobs are done (or grace expired).

        Cancelling the task that runs it abandons in-flight jobs, like
        ``stop(force=True)``.
        """
        await self._core.run()
