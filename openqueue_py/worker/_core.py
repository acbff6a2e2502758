"""The scheduling core that Worker and AsyncWorker share: configuration, lifecycle, wiring.

The parts, each in its own module:

* :mod:`.fetcher`: the lease loop (notifications, polling, the next run_at).
* :mod:`.executor`: the slots that run handlers (threads or tasks).
* :mod:`.completer`: acks in batches (``oq_ack_many``), nacks per job.
* :mod:`.heartbeat`: one loop extending every held lease.
* :mod:`.listener`: the LISTEN connection.
* :mod:`.maintenance`: ``oq_reap()`` and ``oq_tick()``, one worker at a time.
* :mod:`.signals`: SIGTERM / SIGINT.

Every decision about a job (which one is due, whether a lease is still held,
what a nack does) is taken by the SQL functions; the core only decides
*when* to call them. It runs on one event loop; the only other threads are a
sync Worker's slot threads, which hand results back to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from .._connect import DEFAULT_PREPARE_THRESHOLD
from ..errors import OpenQueueError, WorkerError
from ..models import Job, Leased
from . import signals, startup
from .completer import Completer
from .connections import Connections
from .executor import Executor
from .fetcher import Fetcher
from .heartbeat import Heartbeat, beat_every
from .jobs import Run
from .listener import listen_all
from .logging import log
from .maintenance import reap_loop, tick_loop

# How long finished jobs may wait for their batched ack when the batch does not fill.
FLUSH_INTERVAL = 0.005


class Core:
    """Everything both workers do; see the module docstring."""

    def __init__(
        self,
        *,
        dsn: str,
        handlers: Mapping[str, Callable[[Job], Any]],
        executor: Executor,
        concurrency: int,
        poll_interval: float,
        lease_seconds: int | None,
        grace_period: float,
        reap_interval: float | None,
        batch_size: int | None,
        prefetch: int,
        durable_leases: bool,
        worker_id: str | None,
        handle_signals: bool,
        listen_dsn: str | None = None,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
        metrics_port: int | None = None,
        tick_interval: float = 1.0,
    ) -> None:
        if not isinstance(dsn, str):
            raise WorkerError(f"the worker needs a DSN string, got {type(dsn).__name__}")
        if listen_dsn is not None and not isinstance(listen_dsn, str):
            raise WorkerError(f"listen_dsn must be a DSN string or None, got {type(listen_dsn).__name__}")
        threshold = prepare_threshold
        if threshold is not None and (type(threshold) is not int or threshold < 0):
            raise WorkerError(f"prepare_threshold must be an int >= 0 or None, got {prepare_threshold!r}")
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
        if prefetch is not None and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0
        ):
            raise WorkerError(f"prefetch must be an int >= 0 or None, got {prefetch!r}")
        for name, value in (("poll_interval", poll_interval), ("grace_period", grace_period)):
            if not isinstance(value, int | float) or value < 0:
                raise WorkerError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if poll_interval <= 0:
            raise WorkerError("poll_interval must be > 0")
        if reap_interval is not None and (not isinstance(reap_interval, int | float) or reap_interval <= 0):
            raise WorkerError(f"reap_interval must be > 0 seconds or None, got {reap_interval!r}")
        if isinstance(tick_interval, bool) or not isinstance(tick_interval, int | float) or tick_interval < 0:
            raise WorkerError(
                f"tick_interval must be a number of seconds >= 0 (0: off), got {tick_interval!r}"
            )

        self.dsn = dsn
        self.listen_dsn = listen_dsn or dsn
        self.nodes: list[tuple[str, int, bool]] = []  # a Citus cluster's (see _run)
        self.citus = False
        self.prepare_threshold = prepare_threshold
        self.handlers = dict(handlers)
        self.queues = list(self.handlers)
        self.executor = executor
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.durable_leases = bool(durable_leases)
        self.capacity = concurrency + self.prefetch
        self.poll_interval = float(poll_interval)
        self.lease_seconds = lease_seconds
        self.grace_period = float(grace_period)
        self.reap_interval = reap_interval
        self.tick_interval = float(tick_interval)
        self.batch_size = min(batch_size or concurrency, self.capacity)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.handle_signals = handle_signals
        if metrics_port is not None and (type(metrics_port) is not int or not 0 <= metrics_port <= 65535):
            raise WorkerError(f"metrics_port must be a port number (0-65535) or None, got {metrics_port!r}")
        self.metrics_port = metrics_port
        self.metrics: Any = None  # a metrics.WorkerMetrics while run() serves metrics_port

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
        # Fail fast, in one line, on what no retry cures (see .startup).
        await startup.check(self.dsn, self.listen_dsn, self.prepare_threshold)
        # A Citus cluster (contract section 10): its nodes, to LISTEN on each;
        # calls for a leased job go one queue per statement, each routed.
        self.nodes = await startup.cluster_nodes(self.dsn, self.prepare_threshold)
        self.citus = bool(self.nodes)
        if self.metrics_port is not None:
            self.metrics = _serve_metrics(self.metrics_port)
        # Jobs this worker holds a lease on and has not settled: waiting for a
        # slot, running, or (once finished) handed to the completer.
        self.inflight: dict[int, Run] = {}
        self.fetcher = Fetcher(self)
        # The lease calls, plus the completer, the heartbeat, the reaper, the ticker and a nack or two.
        self.conns = Connections(
            self.dsn, max_size=self.fetcher.max_calls + 5, prepare_threshold=self.prepare_threshold
        )
        self.heartbeat = Heartbeat(self)
        self.completer = Completer(
            self, flush_size=max(self.batch_size, self.concurrency), flush_interval=FLUSH_INTERVAL
        )
        if not self.citus:  # one statement acks and refills (on Citus: two calls, each routed)
            self.completer.lease_source = self.fetcher.ride_along
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop_event = asyncio.Event()
        self.stopping = False
        self._forced = False

        self._signals = signals.Signals(loop, self._on_signal) if self.handle_signals else None
        self.executor.start(self.handlers, self._on_done, self.worker_id)
        log(
            logging.INFO,
            "worker.started",
            worker_id=self.worker_id,
            queues=",".join(self.queues),
            concurrency=self.concurrency,
        )
        background = [
            asyncio.create_task(listen_all(self), name="openqueue-listen"),
            asyncio.create_task(self.heartbeat.loop(), name="openqueue-heartbeat"),
        ]
        if self.reap_interval is not None:
            background.append(asyncio.create_task(reap_loop(self, self.reap_interval), name="openqueue-reap"))
        if self.tick_interval > 0:
            background.append(asyncio.create_task(tick_loop(self, self.tick_interval), name="openqueue-tick"))
        fetch_task = asyncio.create_task(self.fetcher.loop(), name="openqueue-fetch")
        self._fetch_task = fetch_task
        with self._stop_lock:
            self._loop = loop
            requested = self._stop_requested
        if requested is not None:
            self._request_stop(requested)
        error: BaseException | None = None
        try:
            try:
                await fetch_task
            except asyncio.CancelledError:
                if not self._forced:
                    raise
            except OpenQueueError as exc:  # WorkerError, NotInstalled: see .startup.fatal
                error = exc
                self._request_stop(False)
            await self._drain()
        finally:
            await self._abandon_all()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.conns.close()
            if self._signals is not None:
                self._signals.restore()
            if self.metrics is not None:
                self.metrics.stop_server()
            log(logging.INFO, "worker.stopped", worker_id=self.worker_id)
        if error is not None:
            raise error

    # -- jobs: leased, finished ------------------------------------------------------------

    def dispatch(self, leased: Leased, lease_left: float | None, leased_at: float) -> None:
        """A job just leased: track it, schedule its heartbeat, queue it for a slot."""
        every = beat_every(lease_left)
        run = Run(leased, beat_at=leased_at + every, beat_every=every)
        earlier = self.inflight.get(leased.job.id)
        if earlier is not None:  # its lease expired and we leased the job again: it is gone
            earlier.lost = True
            earlier.job.lease_lost.set()
            self.executor.cancel(earlier)
        self.inflight[leased.job.id] = run
        self._idle.clear()
        self.heartbeat.track(run)
        self.executor.submit(run)

    def _on_done(self, run: Run, value: Any, failure: BaseException | None, ended: float) -> None:
        if self.inflight.get(run.job_id) is not run:
            # Abandoned already (forced stop); or an earlier lease of a job this
            # worker has leased again since (that lease is gone: no ack).
            if run.job_id in self.inflight:
                log(
                    logging.WARNING,
                    "job.discarded",
                    worker_id=self.worker_id,
                    outcome="lease_lost",
                    **run.log_fields(ended - run.started),
                )
            return
        del self.inflight[run.job_id]
        duration = ended - run.started
        if self.metrics is not None:
            self.metrics.observe(run.job.queue_name, _outcome(run, failure), duration)
        if run.lost:
            log(
                logging.WARNING,
                "job.discarded",
                worker_id=self.worker_id,
                outcome="lease_lost",
                **run.log_fields(duration),
            )
        elif failure is None and run.acked_in:  # Job.ack_in: completed in the handler's transaction
            log(
                logging.INFO,
                "job.completed",
                worker_id=self.worker_id,
                outcome="completed",
                **run.log_fields(duration),
            )
        elif failure is None:
            self.completer.ack(run, value, duration)
        else:
            self.completer.nack(run, failure, duration)
        if self.stopping:
            self.completer.flush_now()
            self.check_idle()
        else:
            self.fetcher.wake()

    def check_idle(self) -> None:
        if not self.inflight and not self.completer.busy:
            self._idle.set()

    # -- stopping ------------------------------------------------------------------------

    def _request_stop(self, force: bool) -> None:
        if not self.stopping:
            self.stopping = True
            self._stop_event.set()
            self.fetcher.wake()
            self.completer.flush_now()
            self.check_idle()
            log(
                logging.INFO,
                "worker.stopping",
                worker_id=self.worker_id,
                count=len(self.inflight),
                reason="forced" if force else "graceful",
            )
        if force and not self._forced:
            self._forced = True
            self._fetch_task.cancel()

    async def _drain(self) -> None:
        """Let in-flight jobs finish, and their acks be sent, within grace_period."""
        if self._forced:
            return
        self.check_idle()
        if not self._idle.is_set():
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.grace_period)
            except TimeoutError:
                log(
                    logging.WARNING,
                    "worker.grace_expired",
                    worker_id=self.worker_id,
                    count=len(self.inflight),
                )

    async def _abandon_all(self) -> None:
        for run in self.inflight.values():
            run.job.lease_lost.set()  # a handler still running may stop early
        await self.executor.close()
        runs = list(self.inflight.values())
        self.inflight.clear()
        for run in runs:
            started = run.started
            log(
                logging.WARNING,
                "job.abandoned",
                worker_id=self.worker_id,
                outcome="abandoned",
                **run.log_fields(time.monotonic() - started if started else None),
            )
        await self.completer.abandon()

    def _on_signal(self, signum: int) -> None:
        if not self.stopping:
            log(logging.INFO, "worker.signal", worker_id=self.worker_id, reason=signals.signal_name(signum))
            self._request_stop(False)
            return
        if self._signals is not None:
            self._signals.redeliver(signum, self.worker_id, len(self.inflight))

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when the worker is stopping."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)


def _outcome(run: Run, failure: BaseException | None) -> str:
    return "lease_lost" if run.lost else "succeeded" if failure is None else "failed"


def _serve_metrics(port: int) -> Any:
    """A metrics.WorkerMetrics serving on port (prometheus_client is needed only then)."""
    try:
        from ..metrics import WorkerMetrics
    except ImportError as exc:
        raise WorkerError("metrics_port needs prometheus_client: pip install 'openqueue[dashboard]'") from exc
    metrics = WorkerMetrics()
    try:
        metrics.start_server(port)
    except OSError as exc:
        raise WorkerError(f"metrics_port {port}: cannot listen: {exc.strerror or exc}") from exc
    return metrics
