"""Settling finished jobs: acks in batches, nacks one by one.

Successes are buffered and flushed with ONE ``oq_ack_many`` call per batch:
as soon as ``flush_size`` jobs wait, or ``flush_interval`` seconds after the
first of them, whichever comes first (one flush at a time; jobs finishing
during a flush go into the next). A graceful stop flushes everything before
``run()`` returns. Delivery stays at-least-once: an ack lost in a crash
leaves the job ``processing`` until its lease expires, and it runs again.

When the fetcher has a lease to send while a flush is starting (its batch
not sent yet), the batch carries it: ``oq_ack_many`` and ``oq_lease`` in one statement, one
transaction, one durable commit (``carry``). If that statement fails on a
lost connection, the lease is reported to the fetcher as failed and the
acks are retried alone as below; if the database refuses it, nothing was
committed: the acks are retried alone (so a bad result is found as below)
and the fetcher leases again on its own.

A batch never carries one job id twice (see ``_take_batch``). Every id
``oq_ack_many`` does not return lost its lease (expired and taken
by another worker, or cancelled): ``job.ack_rejected``, never
``job.completed``. A batch the database refuses for a reason other than a
lost connection is split and acked job by job, so one bad result (text
jsonb cannot store) costs only its own result.

A call that failed on a lost connection may have committed all the same
(the reply was lost, not the statement): its retry then finds the lease
gone, because the first call settled it. After such a failure every job the
retry reports as not settled is looked up with ``oq_settled`` (is it still
as our lease left it, and in which state?) and logged as what really
happened: ``job.completed`` when our own first ack completed it,
``job.failed`` / ``job.retry`` / ``job.dead`` when our first nack did, and
``job.ack_rejected`` only when someone else has taken it since.

Nacks stay per job (a task each): they are rare, and each carries its own
error text, delay and retry flag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psycopg

from .. import _sql
from ..errors import InvalidArgument
from .connections import TRANSIENT, Backoff
from .control import Fail, Retry, error_text
from .jobs import Run
from .logging import enabled, log

if TYPE_CHECKING:
    from ._core import Core
    from .fetcher import Rider

T = TypeVar("T")

# (run, result as JSON text or None, handler duration in seconds)
Finished = tuple[Run, str | None, float]


class Completer:
    def __init__(self, core: Core, flush_size: int, flush_interval: float, max_batch: int = 1000) -> None:
        self._core = core
        self._worker_id = core.worker_id
        self.flush_size = max(1, flush_size)
        self.flush_interval = flush_interval
        self._max_batch = max_batch
        self._pending: list[Finished] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._urgent = False
        self._nacks: set[asyncio.Task[None]] = set()
        # A lease to send with the next batch (see carry), and whether a batch is on its way.
        self._rider: Rider | None = None
        self._sending = False
        # Where a starting flush gets a lease to carry (the core wires Fetcher.ride_along); None: never.
        self.lease_source: Callable[[], Rider | None] | None = None

    @property
    def waiting(self) -> bool:
        """Acks wait for a flush that has not started (it will within ``flush_interval``)."""
        return bool(self._pending) and self._flushing is None

    @property
    def busy(self) -> bool:
        """Acks waiting or being sent, or nacks running."""
        return bool(self._pending or self._flushing or self._nacks)

    # -- acks ---------------------------------------------------------------------

    def ack(self, run: Run, value: Any, duration: float) -> None:
        text: str | None = None
        if value is not None:
            try:
                # allow_nan=False: jsonb has no NaN or Infinity, and one refused
                # result would otherwise fail the whole batch.
                text = json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                self._not_json(run, duration, exc)
        self._pending.append((run, text, duration))
        if len(self._pending) >= self.flush_size:
            self._start()
        elif self._timer is None and self._flushing is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._start)

    def carry(self, rider: Rider) -> bool:
        """Send this lease with the batch about to go out, in one statement; False: send it alone.

        Only a flush already started (a full batch, its interval over, a
        stop) whose batch is not on its way yet takes a lease: a lease never
        waits for an ack statement's round trip, and acks never leave sooner
        than they would have. With no-op handlers every lease rides: the
        jobs of one lease finish in one burst, their ack flush starts on the
        last of them, and the fetcher refills the freed slots in that turn.
        """
        if self._rider is not None or self._flushing is None or self._sending or self._core.stopping:
            return False
        self._rider = rider
        return True

    def flush_now(self) -> None:
        """Flush without waiting for a full batch (a stop is under way)."""
        self._urgent = True
        self._start()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushing is None and self._pending:
            self._flushing = asyncio.create_task(self._flush_all(), name="openqueue-flush")

    async def _flush_all(self) -> None:
        try:
            while self._pending:
                batch = self._take_batch()
                rider, self._rider = self._rider, None
                if rider is None and self.lease_source is not None:
                    rider = self.lease_source()  # the slots these acks freed, refilled in the same statement
                self._sending = True
                try:
                    await self._flush(batch, rider=rider)
                except asyncio.CancelledError:
                    self._pending[:0] = batch  # abandon() reports them
                    raise
                finally:
                    self._sending = False
                if len(self._pending) < self.flush_size and not self._urgent and self._rider is None:
                    break
        finally:
            self._flushing = None
            if self._rider is not None:  # cancelled before it went out
                rider, self._rider = self._rider, None
                rider.land(None)
            if self._pending:
                if len(self._pending) >= self.flush_size or self._urgent:
                    self._start()
                elif self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self._start)
            self._core.check_idle()

    def _take_batch(self) -> list[Finished]:
        """The next batch: at most ``max_batch`` jobs, never one job id twice.

        ``oq_ack_many`` answers with job ids, so one id twice in a batch (the
        same job leased again by this worker after its first lease expired,
        both runs finished) could not tell which token completed it: the
        second run of that id waits for the next batch.
        """
        batch: list[Finished] = []
        later: list[Finished] = []
        ids: set[int] = set()
        for item in self._pending:
            if len(batch) >= self._max_batch or item[0].job_id in ids:
                later.append(item)
            else:
                ids.add(item[0].job_id)
                batch.append(item)
        self._pending = later
        return batch

    async def _flush(self, batch: list[Finished], unknown: bool = False, rider: Rider | None = None) -> None:
        """Ack ``batch``; ``unknown``: an earlier try may have committed (its reply was lost).

        ``rider``: a lease sent in the same statement on the first try (see
        carry); it lands with its rows, with a lost connection's error, or
        unsent when the database refused the statement (the batch is then
        retried alone, which tells an ack's fault from the lease's).
        """
        ids = [run.job_id for run, _, _ in batch]
        tokens = [run.lease_token for run, _, _ in batch]
        texts = [text for _, text, _ in batch]
        queues = [run.job.queue_name for run, _, _ in batch]
        results = texts if any(text is not None for text in texts) else None
        backoff = Backoff()
        if rider is not None:
            try:
                core = self._core
                call = _sql.ack_many_and_lease(
                    ids, tokens, results, rider.queue, core.worker_id, core.lease_seconds, rider.want, queues
                )
                rider.sent_at = time.monotonic()
                completed, leased = await core.conns.run(call)
            except TRANSIENT as exc:
                rider.land(None, exc)
                unknown = True  # sent, perhaps committed, reply lost: the retry may find it done
                for run, _, duration in batch:
                    self._retrying(run, duration, exc)
                await asyncio.sleep(backoff.next())
            except InvalidArgument as exc:  # the lease's arguments (the acks' are ids and tokens)
                rider.land(None, exc)
            except psycopg.Error:
                rider.land(None)  # nothing committed; the fetcher leases again on its own
            except BaseException:
                rider.land(None)
                raise
            else:
                rider.land(leased)
                await self._done(batch, completed, unknown)
                return
        while True:
            try:
                if getattr(self._core, "citus", False):  # a test may drive a bare core
                    completed = await self._ack_routed(ids, tokens, results, queues)
                else:
                    completed = await self._core.conns.run(_sql.ack_many_json(ids, tokens, results, queues))
                break
            except TRANSIENT as exc:
                unknown = True  # sent, perhaps committed, reply lost: the retry may find it done
                if backoff.failures == 0:
                    for run, _, duration in batch:
                        self._retrying(run, duration, exc)
                await asyncio.sleep(backoff.next())
            except psycopg.Error as exc:
                if len(batch) > 1:
                    for item in batch:  # find the one the database refuses
                        await self._flush([item], unknown)
                    return
                run, text, duration = batch[0]
                if text is not None and isinstance(exc, psycopg.DataError):
                    self._not_json(run, duration, exc)
                    batch, results = [(run, None, duration)], None
                    continue
                log(
                    logging.ERROR,
                    "job.settle_failed",
                    worker_id=self._worker_id,
                    error=str(exc),
                    **run.log_fields(duration),
                )
                return
        await self._done(batch, completed, unknown)

    async def _ack_routed(
        self, ids: list[int], tokens: list[UUID], results: list[str | None] | None, queues: list[str]
    ) -> list[int]:
        """On Citus: one oq_ack_many per queue, each routed to the node holding the queue.

        A call acked what it returned even when a later one fails: the retry
        (``unknown``) then finds those jobs completed through oq_settled.
        """
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(queues):
            groups.setdefault(name, []).append(index)
        completed: list[int] = []
        for name, indexes in groups.items():
            call = _sql.ack_many_routed(
                [ids[i] for i in indexes],
                [tokens[i] for i in indexes],
                None if results is None else [results[i] for i in indexes],
                name,
            )
            completed.extend(await self._core.conns.run(call))
        return completed

    async def _done(self, batch: list[Finished], completed: list[int], unknown: bool) -> None:
        done = set(completed)
        if unknown:
            for run, _, _ in batch:
                if run.job_id not in done and await self.settled(run) == "completed":
                    done.add(run.job_id)
        self._report(batch, done)

    async def settled(self, run: Run) -> str | None:
        """What became of ``run``'s job since our lease (``oq_settled``): its status, or None
        when it was leased again since (or the question cannot be answered)."""
        call = _sql.settled(run.job_id, self._worker_id, run.job.attempts)
        backoff = Backoff()
        while True:
            try:
                status = await self._core.conns.run(call)
                break
            except TRANSIENT:
                await asyncio.sleep(backoff.next())
            except psycopg.Error as exc:  # an older schema, a missing grant: report as before
                log(
                    logging.WARNING,
                    "job.settle_unknown",
                    worker_id=self._worker_id,
                    error=str(exc),
                    **run.log_fields(),
                )
                return None
        if status is not None:
            log(
                logging.DEBUG,
                "job.settle_recovered",
                worker_id=self._worker_id,
                status=status,
                **run.log_fields(),
            )
        return status

    def _report(self, batch: list[Finished], done: set[int]) -> None:
        info, warning = enabled(logging.INFO), enabled(logging.WARNING)
        for run, _, duration in batch:
            if run.job_id in done:
                if info:
                    log(
                        logging.INFO,
                        "job.completed",
                        worker_id=self._worker_id,
                        outcome="completed",
                        **run.log_fields(duration),
                    )
            elif warning:
                log(
                    logging.WARNING,
                    "job.ack_rejected",
                    worker_id=self._worker_id,
                    outcome="lease_lost",
                    **run.log_fields(duration),
                )

    def _not_json(self, run: Run, duration: float, exc: BaseException) -> None:
        log(
            logging.WARNING,
            "job.result_not_json",
            worker_id=self._worker_id,
            error=str(exc),
            **run.log_fields(duration),
        )

    def _retrying(self, run: Run, duration: float, exc: BaseException) -> None:
        log(
            logging.WARNING,
            "job.settle_retry",
            worker_id=self._worker_id,
            error=f"{type(exc).__name__}: {exc}".strip(),
            **run.log_fields(duration),
        )

    # -- nacks ----------------------------------------------------------------------

    def nack(self, run: Run, failure: BaseException, duration: float) -> None:
        task = asyncio.create_task(self._nack(run, failure, duration), name=f"openqueue-nack-{run.job_id}")
        self._nacks.add(task)
        task.add_done_callback(self._nack_done)

    def _nack_done(self, task: asyncio.Task[None]) -> None:
        self._nacks.discard(task)
        self._core.check_idle()

    async def _settle(self, call: Callable[[], Awaitable[T]], run: Run, duration: float) -> tuple[T, bool]:
        """Run a nack until the database answers: the lease survives a restart.

        Returns the answer and whether an earlier try may have committed (its reply was lost).
        """
        backoff = Backoff()
        while True:
            try:
                return await call(), backoff.failures > 0
            except TRANSIENT as exc:
                if backoff.failures == 0:
                    self._retrying(run, duration, exc)
                await asyncio.sleep(backoff.next())

    async def _nack(self, run: Run, failure: BaseException, duration: float) -> None:
        fields = run.log_fields(duration)
        retry_in: timedelta | None = None
        retry = True
        if isinstance(failure, Retry):
            error, retry_in = f"Retry: {failure.message}", failure.in_
        elif isinstance(failure, Fail):
            error, retry = f"Fail: {failure.message}", False
        else:
            error = error_text(failure)
        # PostgreSQL text cannot hold NUL; an exception message may. Recorded visibly instead.
        error = error.replace("\x00", "\\x00")
        try:
            call = _sql.nack(run.job_id, run.lease_token, error, retry_in, retry, run.job.queue_name)
            state, unknown = await self._settle(lambda: self._core.conns.run(call), run, duration)
            if state is None and unknown:
                status = await self.settled(run)
                if status in ("failed", "dead"):  # our first nack did it (only a nack or reap sets these)
                    state = status
        except asyncio.CancelledError:
            log(logging.WARNING, "job.abandoned", worker_id=self._worker_id, outcome="abandoned", **fields)
            raise
        except (psycopg.Error, InvalidArgument) as exc:
            log(logging.ERROR, "job.settle_failed", worker_id=self._worker_id, error=str(exc), **fields)
            return
        self._core.fetcher.schedule_changed()  # a failed job has a future run_at now
        summary = error.partition("\n")[0]
        if state is None:
            log(
                logging.WARNING, "job.ack_rejected", worker_id=self._worker_id, outcome="lease_lost", **fields
            )
        elif state == "dead":
            log(logging.ERROR, "job.dead", worker_id=self._worker_id, outcome="dead", error=summary, **fields)
        elif isinstance(failure, Retry):
            log(
                logging.INFO, "job.retry", worker_id=self._worker_id, outcome="retry", error=summary, **fields
            )
        else:
            log(
                logging.WARNING,
                "job.failed",
                worker_id=self._worker_id,
                outcome="failed",
                error=summary,
                **fields,
            )

    # -- stopping -------------------------------------------------------------------

    async def abandon(self) -> None:
        """Give up on everything not settled yet (grace expired, forced stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [*self._nacks, *([self._flushing] if self._flushing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for run, _, duration in pending:
            log(
                logging.WARNING,
                "job.abandoned",
                worker_id=self._worker_id,
                outcome="abandoned",
                **run.log_fields(duration),
            )
