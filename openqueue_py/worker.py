"""The worker runtime: lease jobs, run handlers, heartbeat, ack or nack.

:class:`Worker` runs plain functions in a thread pool; :class:`AsyncWorker`
runs ``async def`` handlers on the event loop. Both are thin faces over one
asyncio scheduling core (:class:`_Core`); they differ only in how a handler
is invoked. Every decision about a job (which one is due, whether a lease is
still held, what a nack does) is taken by the SQL functions; the core only
decides *when* to call them.

How the core spends its time:

* One dedicated connection holds ``LISTEN openqueue``; a notification naming
  a handled queue marks that queue ready and wakes the lease loop at once.
* Otherwise the loop sleeps until the next poll (``poll_interval``) or, if
  sooner, the earliest future ``run_at`` of its queues (``oq_next_run_at``).
* A lease round asks each ready queue for up to the number of free slots
  (capped by ``batch_size``) in one ``oq_lease`` call.
* Each job runs in a task of its own that heartbeats every third of the
  lease, then acks (return value as result) or nacks (exception text and
  traceback; :class:`Retry` chooses the delay, :class:`Fail` skips retries).
* ``oq_reap()`` runs every ``reap_interval`` seconds, so that a crashed
  worker's jobs come back without an external scheduler.
* Database errors never escape :meth:`Worker.run`: the worker reconnects
  with capped exponential backoff; an ack or nack is retried until the
  database answers.

Logging goes to the ``openqueue.worker`` logger. The message of every record
is a stable event name (``job.completed``, ``worker.stopping`` ...); details
are ``extra`` attributes: ``event``, ``worker_id``, ``job_id``, ``queue``,
``attempt``, ``duration_s``, ``outcome``, ``error``. :class:`LogFormatter`
prints them as ``key=value`` pairs.

The events, their levels and meanings are listed in README.md ("Logging");
a test keeps that table and this module in step.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from .client_async import AsyncClient
from .errors import InvalidArgument, WorkerError
from .models import Job, Leased

__all__ = ["AsyncWorker", "Fail", "LogFormatter", "Retry", "Worker"]

logger = logging.getLogger("openqueue.worker")

T = TypeVar("T")

# Channels, with a queue name as payload: ``openqueue`` when jobs became due
# (oq_enqueue, oq_reap, oq_replay), ``openqueue_scheduled`` when a job was
# added for later (oq_enqueue with a future run_at, oq_nack's retries).
DUE_CHANNEL = "openqueue"
SCHEDULED_CHANNEL = "openqueue_scheduled"
LISTEN_STATEMENT = f"listen {DUE_CHANNEL}; listen {SCHEDULED_CHANNEL}"

# Errors after which the same call may well succeed: the connection dropped,
# the server is restarting, a pool or socket timed out.
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, OSError)

# SQLSTATEs the lease call raises for a bad argument: a worker configured
# with them can never lease anything, so run() raises WorkerError.
_CONFIG_SQLSTATES = {"22023", "22004"}


# -- handler control flow -----------------------------------------------------------


class Retry(Exception):
    """Raise from a handler to retry the job later.

    ``in_`` is the delay (a ``timedelta`` or seconds); ``None`` lets the
    queue's exponential backoff decide. The attempt counts: with no attempts
    left the job goes dead, as SQL decides. Not an :class:`OpenQueueError`.
    """

    def __init__(self, in_: timedelta | float | None = None, message: str | None = None) -> None:
        if in_ is not None and not isinstance(in_, timedelta):
            in_ = timedelta(seconds=in_)
        self.in_: timedelta | None = in_
        self.message = message or "retry requested"
        super().__init__(self.message)


class Fail(Exception):
    """Raise from a handler to fail the job for good: it goes straight to dead.

    ``message`` is recorded in the job's errors. Not an :class:`OpenQueueError`.
    """

    def __init__(self, message: str = "failed by handler") -> None:
        self.message = message
        super().__init__(message)


def _error_text(exc: BaseException) -> str:
    """What oq_nack records for an exception: type, message, then the traceback."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    return f"{type(exc).__name__}: {exc}\n\n{trace}"


# -- logging --------------------------------------------------------------------------

_LOG_FIELDS = (
    "worker_id",
    "job_id",
    "queue",
    "attempt",
    "outcome",
    "duration_s",
    "count",
    "queues",
    "concurrency",
    "lease_expires_at",
    "reason",
    "error",
)


class LogFormatter(logging.Formatter):
    """``time level logger event key=value ...``: the worker's extra fields made visible."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{name}={getattr(record, name)!r}"
            if isinstance(getattr(record, name), str) and " " in getattr(record, name)
            else f"{name}={getattr(record, name)}"
            for name in _LOG_FIELDS
            if getattr(record, name, None) is not None
        ]
        if not pairs:
            return text
        first, newline, rest = text.partition("\n")
        return f"{first} {' '.join(pairs)}{newline}{rest}"


def _log(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, **fields})


def _job_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue_name, "attempt": job.attempts}


# -- small helpers ----------------------------------------------------------------------


class _Backoff:
    """Capped exponential backoff with a little jitter."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self.failures))
        self.failures += 1
        return delay * random.uniform(0.9, 1.1)

    def reset(self) -> bool:
        """Forget the failures; True if there were any."""
        had, self.failures = self.failures > 0, 0
        return had


def _connect_kwargs(dsn: str) -> dict[str, Any]:
    """Connection settings a long-running worker wants unless the DSN says otherwise."""
    given = conninfo_to_dict(dsn)
    wanted: dict[str, Any] = {
        "application_name": "openqueue-worker",
        "connect_timeout": 10,
        # A peer that vanished without closing the socket is noticed within a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return {k: v for k, v in wanted.items() if k not in given}


async def _connect(dsn: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **_connect_kwargs(dsn))


async def _close_quietly(conn: psycopg.AsyncConnection) -> None:
    with suppress(Exception):
        await conn.close()


class _Connections:
    """A few autocommit connections, opened on demand and dropped once broken.

    Deliberately simpler than a pool: a connection that failed is closed at
    once and the next call opens a fresh one, so reconnecting follows the
    worker's own backoff and nothing waits on a pool's reconnect schedule.
    """

    def __init__(self, dsn: str, max_size: int) -> None:
        self._dsn = dsn
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(max_size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.closed or candidate.broken:
                    await _close_quietly(candidate)
                else:
                    conn = candidate
            if conn is None:
                conn = await _connect(self._dsn)
            try:
                yield conn
            finally:
                reusable = (
                    not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status == TransactionStatus.IDLE
                )
                if reusable:
                    self._idle.append(conn)
                else:
                    await _close_quietly(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close_quietly(conn)


# -- how handlers are invoked: the only difference between the two faces -------------


class _ThreadInvoker:
    """Plain functions, run in a ThreadPoolExecutor of ``concurrency`` threads."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="openqueue-worker")

    async def invoke(self, handler: Callable[[Job], Any], job: Job) -> Any:
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, context.run, handler, job)

    def close(self) -> None:
        # Handlers still running (grace expired, forced stop) are not waited for.
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class _AsyncInvoker:
    """``async def`` handlers, awaited on the worker's event loop."""

    def start(self) -> None:
        pass

    async def invoke(self, handler: Callable[[Job], Awaitable[Any]], job: Job) -> Any:
        return await handler(job)

    def close(self) -> None:
        pass


def _is_async_callable(handler: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


# -- the scheduling core ------------------------------------------------------------------


class _Core:
    """Everything both workers do; see the module docstring."""

    def __init__(
        self,
        *,
        dsn: str,
        handlers: Mapping[str, Callable[[Job], Any]],
        invoker: _ThreadInvoker | _AsyncInvoker,
        concurrency: int,
        poll_interval: float,
        lease_seconds: int | None,
        grace_period: float,
        reap_interval: float | None,
        batch_size: int | None,
        worker_id: str | None,
        handle_signals: bool,
    ) -> None:
        if not isinstance(dsn, str):
            raise WorkerError(f"the worker needs a DSN string, got {type(dsn).__name__}")
        if not isinstance(handlers, Mapping) or not handlers:
            raise WorkerError("handlers must be a non-empty dict of queue name -> callable")
        for queue, handler in handlers.items():
            if not isinstance(queue, str):
                raise WorkerError(f"queue names must be strings, got {queue!r}")
            if not callable(handler):
                raise WorkerError(f"the handler for queue {queue!r} is not callable: {handler!r}")
        for name, value in (("concurrency", concurrency), ("batch_size", batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise WorkerError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("poll_interval", poll_interval), ("grace_period", grace_period)):
            if not isinstance(value, int | float) or value < 0:
                raise WorkerError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if poll_interval <= 0:
            raise WorkerError("poll_interval must be > 0")
        if reap_interval is not None and (not isinstance(reap_interval, int | float) or reap_interval <= 0):
            raise WorkerError(f"reap_interval must be > 0 seconds or None, got {reap_interval!r}")

        self.dsn = dsn
        self.handlers = dict(handlers)
        self.queues = list(self.handlers)
        self.invoker = invoker
        self.concurrency = concurrency
        self.poll_interval = float(poll_interval)
        self.lease_seconds = lease_seconds
        self.grace_period = float(grace_period)
        self.reap_interval = reap_interval
        self.batch_size = min(batch_size or concurrency, concurrency)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handle_signals = handle_signals

        # stop() may come from any thread, before or during run().
        self._stop_lock = threading.Lock()
        self._stop_requested: bool | None = None  # None: no; False: graceful; True: forced
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False

    # -- stop, from anywhere ----------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        with self._stop_lock:
            self._stop_requested = bool(force) or bool(self._stop_requested)
            loop = self._loop
        if loop is not None:
            with suppress(RuntimeError):  # the loop just closed: run() is over anyway
                loop.call_soon_threadsafe(self._request_stop, force)

    # -- run ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self._running:
            raise WorkerError("this worker is already running")
        self._running = True
        try:
            await self._run()
        finally:
            with self._stop_lock:
                self._loop = None
                self._stop_requested = None
            self._running = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        self._client = AsyncClient(self.dsn)  # only its methods are used, always with conn=
        self._conns = _Connections(self.dsn, max_size=min(self.concurrency, 8) + 2)
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._stopping = False
        self._forced = False
        self._ready: set[str] = set(self.queues)
        self._rotation = 0
        self._poll_due = 0.0
        self._timer_due: float | None = None
        self._schedule_stale = True

        restore_signals = self._install_signals(loop)
        self.invoker.start()
        _log(
            logging.INFO,
            "worker.started",
            worker_id=self.worker_id,
            queues=",".join(self.queues),
            concurrency=self.concurrency,
        )
        background = [asyncio.create_task(self._listen_loop(), name="openqueue-listen")]
        if self.reap_interval is not None:
            background.append(asyncio.create_task(self._reap_loop(), name="openqueue-reap"))
        lease_task = asyncio.create_task(self._lease_loop(), name="openqueue-lease")
        self._lease_task = lease_task
        with self._stop_lock:
            self._loop = loop
            requested = self._stop_requested
        if requested is not None:
            self._request_stop(requested)
        error: BaseException | None = None
        try:
            try:
                await lease_task
            except asyncio.CancelledError:
                if not self._forced:
                    raise
            except WorkerError as exc:
                error = exc
                self._request_stop(False)
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._abandon_all()
            await self._conns.close()
            self.invoker.close()
            restore_signals()
            _log(logging.INFO, "worker.stopped", worker_id=self.worker_id)
        if error is not None:
            raise error

    # -- stopping ------------------------------------------------------------------------

    def _request_stop(self, force: bool) -> None:
        if not self._stopping:
            self._stopping = True
            self._stop_event.set()
            self._wake.set()
            _log(
                logging.INFO,
                "worker.stopping",
                worker_id=self.worker_id,
                count=len(self._jobs),
                reason="forced" if force else "graceful",
            )
        if force and not self._forced:
            self._forced = True
            self._lease_task.cancel()
            for task in list(self._jobs.values()):
                task.cancel()

    async def _drain(self) -> None:
        """Let in-flight jobs finish within grace_period."""
        if self._jobs and not self._forced:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.grace_period)
            except TimeoutError:
                _log(logging.WARNING, "worker.grace_expired", worker_id=self.worker_id, count=len(self._jobs))

    async def _abandon_all(self) -> None:
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return lambda: None
        installed: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
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

    def _on_signal(self, signum: int) -> None:
        if not self._stopping:
            _log(logging.INFO, "worker.signal", worker_id=self.worker_id, reason=signal.Signals(signum).name)
            self._request_stop(False)
            return
        # A second signal: leave now. Leases expire and oq_reap hands the jobs back.
        _log(logging.WARNING, "worker.exit_now", worker_id=self.worker_id, count=len(self._jobs))
        for handler in logging.getLogger().handlers + logger.handlers:
            with suppress(Exception):
                handler.flush()
        with suppress(Exception):
            sys.stderr.flush()
        os._exit(128 + signum)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when the worker is stopping."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)

    # -- database calls ------------------------------------------------------------------

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        async with self._conns.connection() as conn:
            return await method(*args, conn=conn)

    # -- the lease loop ------------------------------------------------------------------

    def _mark_all_ready(self) -> None:
        self._ready.update(self.queues)
        self._schedule_stale = True
        self._wake.set()

    async def _lease_loop(self) -> None:
        backoff = _Backoff()
        while not self._stopping:
            self._wake.clear()
            now = time.monotonic()
            if now >= self._poll_due:
                self._mark_all_ready()
                self._poll_due = now + self.poll_interval
            if self._timer_due is not None and now >= self._timer_due:
                self._mark_all_ready()
                self._timer_due = None
            free = self.concurrency - len(self._jobs)

            if free > 0 and self._ready:
                try:
                    await self._lease_round(free)
                except _TRANSIENT as exc:
                    self._db_error(backoff, exc)
                    await self._sleep(backoff.next())
                    continue
                except InvalidArgument as exc:
                    raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
                except psycopg.Error as exc:
                    if exc.sqlstate in _CONFIG_SQLSTATES:
                        raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
                    self._db_error(backoff, exc)
                    await self._sleep(backoff.next())
                    continue
                if backoff.reset():
                    _log(logging.INFO, "worker.db_recovered", worker_id=self.worker_id)
                continue

            if free > 0 and self._schedule_stale:
                self._schedule_stale = False
                await self._check_schedule()

            deadline = min(self._poll_due, self._timer_due or self._poll_due)
            timeout = deadline - time.monotonic()
            if timeout > 0 and not self._stopping:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _db_error(self, backoff: _Backoff, exc: BaseException) -> None:
        level = logging.WARNING if backoff.failures == 0 else logging.DEBUG
        _log(level, "worker.db_error", worker_id=self.worker_id, error=f"{type(exc).__name__}: {exc}".strip())

    async def _lease_round(self, free: int) -> None:
        """One oq_lease call per ready queue, each for up to the free slots."""
        count = len(self.queues)
        order = [self.queues[(self._rotation + i) % count] for i in range(count)]
        self._rotation = (self._rotation + 1) % count
        self._schedule_stale = True
        for queue in order:
            if free <= 0 or self._stopping:
                return
            if queue not in self._ready:
                continue
            want = min(free, self.batch_size)
            # Discard first: a notification arriving during the call marks it ready again.
            self._ready.discard(queue)
            try:
                leased = await self._call(
                    self._client.lease_many, queue, self.worker_id, self.lease_seconds, want
                )
            except BaseException:
                self._ready.add(queue)
                raise
            if len(leased) == want:
                self._ready.add(queue)  # probably more where these came from
            if leased:
                _log(logging.DEBUG, "worker.leased", worker_id=self.worker_id, queue=queue, count=len(leased))
            for item in leased:
                self._start_job(item)
            free -= len(leased)

    async def _check_schedule(self) -> None:
        """Sleep no longer than until the earliest future run_at of our queues."""
        try:
            next_run = await self._call(self._client.next_run_at, self.queues)
        except (*_TRANSIENT, psycopg.Error):
            return  # the poll covers it; the lease loop reports database errors
        if next_run is None:
            self._timer_due = None
            return
        delay = (next_run - datetime.now(UTC)).total_seconds()
        # A few milliseconds late, so that now() in oq_lease has passed run_at.
        self._timer_due = time.monotonic() + max(delay, 0.0) + 0.01

    # -- LISTEN -----------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        backoff = _Backoff()
        while True:
            conn: psycopg.AsyncConnection | None = None
            try:
                conn = await _connect(self.dsn)
                await conn.execute(LISTEN_STATEMENT)
                backoff.reset()
                _log(logging.INFO, "worker.listening", worker_id=self.worker_id)
                # Anything enqueued while we were not listening is found by a lease round.
                self._mark_all_ready()
                async for notify in conn.notifies():
                    if notify.payload not in self.handlers:
                        continue
                    if notify.channel == SCHEDULED_CHANNEL:
                        self._schedule_stale = True  # maybe sooner than the current timer
                    else:
                        self._ready.add(notify.payload)
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if backoff.failures == 0 else logging.DEBUG
                _log(level, "worker.listen_lost", worker_id=self.worker_id, error=str(exc).strip())
                await asyncio.sleep(backoff.next())
            finally:
                if conn is not None:
                    await _close_quietly(conn)

    # -- reaping ------------------------------------------------------------------------------

    async def _reap_loop(self) -> None:
        assert self.reap_interval is not None
        while True:
            try:
                count = await self._call(self._client.reap)
            except (*_TRANSIENT, psycopg.Error) as exc:
                _log(logging.DEBUG, "worker.db_error", worker_id=self.worker_id, error=str(exc).strip())
            else:
                if count:
                    _log(logging.INFO, "worker.reaped", worker_id=self.worker_id, count=count)
                    self._mark_all_ready()
            await asyncio.sleep(self.reap_interval)

    # -- one job ---------------------------------------------------------------------------------

    def _start_job(self, leased: Leased) -> None:
        task = asyncio.create_task(self._process(leased), name=f"openqueue-job-{leased.job.id}")
        self._jobs[leased.job.id] = task
        self._idle.clear()

        def done(_: asyncio.Task[None], job_id: int = leased.job.id) -> None:
            self._jobs.pop(job_id, None)
            if not self._jobs:
                self._idle.set()
            self._wake.set()

        task.add_done_callback(done)

    async def _process(self, leased: Leased) -> None:
        job = leased.job
        fields = _job_fields(job)
        handler = self.handlers[job.queue_name]
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(leased, lost))
        started = time.monotonic()
        _log(logging.DEBUG, "job.started", worker_id=self.worker_id, **fields)
        failure: BaseException | None = None
        value: Any = None
        try:
            try:
                value = await self.invoker.invoke(handler, job)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                failure = exc  # the handler cancelled itself: a failure like any other
            except BaseException as exc:
                failure = exc
            finally:
                heartbeat.cancel()
                with suppress(asyncio.CancelledError):
                    await heartbeat
            fields["duration_s"] = round(time.monotonic() - started, 6)
            if lost.is_set():
                _log(
                    logging.WARNING, "job.discarded", worker_id=self.worker_id, outcome="lease_lost", **fields
                )
                return
            if failure is None:
                await self._ack(leased, value, fields)
            else:
                await self._nack(leased, failure, fields)
        except asyncio.CancelledError:
            _log(logging.WARNING, "job.abandoned", worker_id=self.worker_id, outcome="abandoned", **fields)
            raise

    def _heartbeat_delay(self, expires_at: datetime | None) -> float:
        if self.lease_seconds is not None:
            return self.lease_seconds / 3
        if expires_at is None:
            return 1.0
        return max(0.05, (expires_at - datetime.now(UTC)).total_seconds() / 3)

    async def _heartbeat(self, leased: Leased, lost: asyncio.Event) -> None:
        job = leased.job
        expires_at: datetime | None = leased.lease_expires_at
        delay = self._heartbeat_delay(expires_at)
        backoff = _Backoff()
        while True:
            await asyncio.sleep(delay)
            try:
                expires_at = await self._call(
                    self._client.heartbeat, job.id, leased.lease_token, self.lease_seconds
                )
            except (*_TRANSIENT, psycopg.Error) as exc:
                _log(
                    logging.DEBUG,
                    "worker.db_error",
                    worker_id=self.worker_id,
                    error=str(exc).strip(),
                    job_id=job.id,
                )
                delay = min(backoff.next(), self._heartbeat_delay(expires_at))
                continue
            backoff.reset()
            if expires_at is None:
                lost.set()
                _log(logging.WARNING, "job.lease_lost", worker_id=self.worker_id, **_job_fields(job))
                return
            _log(
                logging.DEBUG,
                "job.heartbeat",
                worker_id=self.worker_id,
                lease_expires_at=expires_at.isoformat(),
                **_job_fields(job),
            )
            delay = self._heartbeat_delay(expires_at)

    async def _settle(self, method: Callable[..., Awaitable[T]], *args: Any, fields: dict[str, Any]) -> T:
        """Run ack/nack until the database answers: the lease survives a restart."""
        backoff = _Backoff()
        while True:
            try:
                return await self._call(method, *args)
            except _TRANSIENT as exc:
                if backoff.failures == 0:
                    _log(
                        logging.WARNING,
                        "job.settle_retry",
                        worker_id=self.worker_id,
                        error=f"{type(exc).__name__}: {exc}".strip(),
                        **fields,
                    )
                await asyncio.sleep(backoff.next())

    async def _ack(self, leased: Leased, value: Any, fields: dict[str, Any]) -> None:
        job = leased.job
        try:
            try:
                acked = await self._settle(self._client.ack, job.id, leased.lease_token, value, fields=fields)
            except (InvalidArgument, psycopg.DataError) as exc:
                if value is None:
                    raise
                _log(
                    logging.WARNING, "job.result_not_json", worker_id=self.worker_id, error=str(exc), **fields
                )
                acked = await self._settle(self._client.ack, job.id, leased.lease_token, None, fields=fields)
        except (psycopg.Error, InvalidArgument) as exc:
            _log(logging.ERROR, "job.settle_failed", worker_id=self.worker_id, error=str(exc), **fields)
            return
        if acked:
            _log(logging.INFO, "job.completed", worker_id=self.worker_id, outcome="completed", **fields)
        else:
            _log(
                logging.WARNING, "job.ack_rejected", worker_id=self.worker_id, outcome="lease_lost", **fields
            )

    async def _nack(self, leased: Leased, failure: BaseException, fields: dict[str, Any]) -> None:
        job = leased.job
        retry_in: timedelta | None = None
        retry = True
        if isinstance(failure, Retry):
            error, retry_in = f"Retry: {failure.message}", failure.in_
        elif isinstance(failure, Fail):
            error, retry = f"Fail: {failure.message}", False
        else:
            error = _error_text(failure)
        try:
            state = await self._settle(
                self._client.nack, job.id, leased.lease_token, error, retry_in, retry, fields=fields
            )
        except (psycopg.Error, InvalidArgument) as exc:
            _log(logging.ERROR, "job.settle_failed", worker_id=self.worker_id, error=str(exc), **fields)
            return
        self._schedule_stale = True  # a failed job has a future run_at now
        summary = error.partition("\n")[0]
        if state is None:
            _log(
                logging.WARNING, "job.ack_rejected", worker_id=self.worker_id, outcome="lease_lost", **fields
            )
        elif state == "dead":
            _log(logging.ERROR, "job.dead", worker_id=self.worker_id, outcome="dead", error=summary, **fields)
        elif isinstance(failure, Retry):
            _log(
                logging.INFO, "job.retry", worker_id=self.worker_id, outcome="retry", error=summary, **fields
            )
        else:
            _log(
                logging.WARNING,
                "job.failed",
                worker_id=self.worker_id,
                outcome="failed",
                error=summary,
                **fields,
            )


# -- the two faces ------------------------------------------------------------------------------


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
        worker_id: str | None = None,
        handle_signals: bool = True,
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
        call asks for; never more than the free slots.
        ``worker_id`` (``host:pid:random``): stored as the jobs' ``leased_by``.
        ``handle_signals`` (True): when run() is in the main thread, SIGTERM and
        SIGINT stop the worker gracefully; a second signal exits the process
        at once (leases then expire and the jobs come back).

        Raises :class:`WorkerError` for a configuration that cannot work.
        """
        if isinstance(handlers, Mapping):
            for queue, handler in handlers.items():
                if callable(handler):
                    self._check_handler(queue, handler)
        self._core = _Core(
            dsn=dsn,
            handlers=handlers,
            invoker=self._invoker(concurrency),
            concurrency=concurrency,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            grace_period=grace_period,
            reap_interval=reap_interval,
            batch_size=batch_size,
            worker_id=worker_id,
            handle_signals=handle_signals,
        )

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        raise NotImplementedError

    def _invoker(self, concurrency: int) -> _ThreadInvoker | _AsyncInvoker:
        raise NotImplementedError

    @property
    def worker_id(self) -> str:
        """The id stored as ``leased_by`` on the jobs this worker leases."""
        return self._core.worker_id

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
    """Run plain-function handlers in a thread pool of ``concurrency`` threads.

    ``Worker(dsn, {"emails": send}, concurrency=4).run()``; the arguments are
    described on ``__init__``. A coroutine function is refused (use
    :class:`AsyncWorker`).
    """

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        if _is_async_callable(handler):
            raise WorkerError(f"the handler for queue {queue!r} is an async function: use AsyncWorker")

    def _invoker(self, concurrency: int) -> _ThreadInvoker:
        return _ThreadInvoker(concurrency if isinstance(concurrency, int) and concurrency > 0 else 1)

    def run(self) -> None:
        """Process jobs until stopped; return once in-flight jobs are done (or grace expired).

        Runs an event loop of its own, so it works in any thread that has none
        running (signal handlers only in the main thread). Database errors
        never end it; :class:`WorkerError` does (a configuration the database
        refuses, after in-flight jobs have finished).
        """
        asyncio.run(self._core.run())


class AsyncWorker(_Face):
    """Run ``async def`` handlers as tasks on the caller's event loop.

    ``await AsyncWorker(dsn, {"emails": send}, concurrency=50).run()``; the
    arguments are described on ``__init__``. A plain function is refused (use
    :class:`Worker`).
    """

    def _check_handler(self, queue: str, handler: Callable[..., Any]) -> None:
        if not _is_async_callable(handler):
            raise WorkerError(f"the handler for queue {queue!r} is not an async function: use Worker")

    def _invoker(self, concurrency: int) -> _AsyncInvoker:
        return _AsyncInvoker()

    async def run(self) -> None:
        """Process jobs until stopped; return once in-flight jobs are done (or grace expired).

        Cancelling the task that runs it abandons in-flight jobs, like
        ``stop(force=True)``.
        """
        await self._core.run()
