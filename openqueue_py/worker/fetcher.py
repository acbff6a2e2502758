"""The lease loop: keeps the worker's slots supplied with due jobs.

* A queue is *ready* when a notification named it, a poll came due, or its
  last lease call returned all it asked for. Each ``oq_lease`` call asks one
  ready queue for up to ``batch_size`` jobs, never more than the free
  capacity; each row carries its lease length as the database computed it.
* Several lease calls may be in flight at once (up to one per batch that
  fits in the capacity, at most ``MAX_LEASE_CALLS``), each on its own
  connection: with small batches, free slots are refilled in parallel rather
  than one round trip after another. A queue gets a second call in flight
  only while its calls come back full (it is *hot*): a notification for one
  job costs one call, not one per free slot.
* A lease due while a batch of acks is about to be sent goes out WITH it:
  the completer sends ``oq_ack_many`` and ``oq_lease`` as one statement
  (``_sql.ack_many_and_lease``), so a drain costs one round trip and one
  commit per batch, not two (see :class:`Rider`). A lease never waits for
  acks: with no flush starting, or its statement already sent, it goes alone.
* Capacity is ``concurrency + prefetch``: with a prefetch, jobs are leased
  while every slot is still busy, so a slot that finishes finds its next job
  waiting instead of a round trip (see ``_should_lease``).
* With nothing ready it sleeps until the next poll (``poll_interval``) or the
  earliest future ``run_at`` of its queues, whichever is sooner; that delay is
  computed by the database (``oq_next_run_at(...) - now()``), never from the
  local clock.
* Before it sleeps with free slots it registers as waiting (``oq_wait``) for
  its queues, at most every ``WAIT_SECONDS / 2``, and then leases once more
  before sleeping: queues in ``when_waiting`` notify mode only notify while
  someone is registered, and that order (register, lease, sleep) is what
  makes the protocol lose no wake-up. On a database that refuses ``oq_wait``
  (an older schema, a role without it) the worker carries on without it;
  such queues then wake it by polling only.
* Flow control (``oq_set_queue_limits``): a lease that comes back short may
  mean a queue held at ``max_running`` or at its rate limit rather than a
  drained one, and nothing notifies when such a queue may lease again. So
  for a queue with limits (``oq_limited_queues``, asked at start and at
  every poll), if the short lease brought jobs or this worker holds jobs of
  that queue, the queue is retried after ``FLOW_RETRY_MIN``, doubling while
  the retries bring nothing (up to ``poll_interval``), and at once when one
  of its jobs held here finishes. Once the delay passes ``poll_interval``
  with none of its jobs held here, notifications and the poll take over.
  So the retries after a short lease are a logarithmic ladder, never a
  loop; a queue without limits has none (its short lease means drained),
  and until the database has answered, every queue counts as limited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

import psycopg

from .. import _sql
from ..errors import InvalidArgument, WorkerError
from ..models import Leased
from .connections import CONFIG_SQLSTATES, TRANSIENT, Backoff
from .logging import enabled, log
from .startup import fatal

if TYPE_CHECKING:
    from ._core import Core

# A few milliseconds late for a scheduled job, so that now() in oq_lease has passed run_at.
_SCHEDULE_SLACK = 0.01

MAX_LEASE_CALLS = 8

# How long one oq_wait registration lasts; it is renewed after half of it.
WAIT_SECONDS = 60

# The first retry of a queue whose lease came back short (see the module docstring).
FLOW_RETRY_MIN = 0.05


class Wake:
    """An ``asyncio.Event`` with a timeout, minus ``wait_for``'s extra task and hops.

    ``set`` resumes the waiting loop in the very next turn of the event loop:
    the fetcher then decides about a lease before a batch of acks started in
    the same turn goes out, and can send its lease with them.
    """

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self, timeout: float) -> None:
        """Until set, or ``timeout`` seconds."""
        if self._flag:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Rider:
    """One lease call: sent on its own (``Fetcher._lease``), or carried by the completer.

    With acks waiting when a lease is due, the completer sends both in ONE
    statement (``_sql.ack_many_and_lease``): one round trip and one commit
    refill the slots that the acked jobs freed. That commit is durable
    whatever ``durable_leases`` says (the acks need it). The completer calls
    ``land`` exactly once: with the rows, with the error, or with neither
    when the lease was not sent after all (the queue stays ready).
    """

    __slots__ = ("_fetcher", "notified", "queue", "sent_at", "want")

    def __init__(self, fetcher: Fetcher, queue: str, want: int) -> None:
        self._fetcher = fetcher
        self.queue = queue
        self.want = want
        # A short result only clears the ready flag if no notification came meanwhile.
        self.notified = fetcher._notified[queue]
        self.sent_at = 0.0

    def call(self, durable: bool = True) -> _sql.Call[list[tuple[Leased, float]]]:
        core = self._fetcher._core
        return _sql.lease_timed(self.queue, core.worker_id, core.lease_seconds, self.want, durable)

    def land(self, leased: list[tuple[Leased, float]] | None, exc: BaseException | None = None) -> None:
        self._fetcher._landed(self, leased, exc)


def max_lease_calls(capacity: int, batch_size: int) -> int:
    return max(1, min(MAX_LEASE_CALLS, math.ceil(capacity / batch_size)))


class Fetcher:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._queues = core.queues
        self._ready: set[str] = set(core.queues)
        # Bumped by every notification: a short lease result only clears the
        # ready flag if no notification came while the call was in flight.
        self._notified: dict[str, int] = dict.fromkeys(core.queues, 0)
        self._wake = Wake()
        self._rotation = 0
        self._poll_due = 0.0
        self._timer_due: float | None = None
        self._schedule_stale = True
        self._max_calls = max_lease_calls(core.capacity, core.batch_size)
        self._calls: set[asyncio.Task[None]] = set()
        self._calls_per_queue: dict[str, int] = dict.fromkeys(core.queues, 0)
        self._hot: set[str] = set()
        self._reserved = 0  # jobs asked for by the calls in flight
        self._in_flight = 0  # lease calls sent on their own or carried by the completer (see Rider)
        self._failure: BaseException | None = None
        self._succeeded = False
        self._wait_renew_at = 0.0  # monotonic; math.inf once oq_wait was refused
        # Our queues with a max_running or a rate_limit; None: not known (all count as limited).
        self._limited: set[str] | None = None
        self._limits_stale = True  # ask oq_limited_queues before the next lease round
        self._limits_refused = False
        # Flow control: queue -> (retry at, delay, jobs of it held here when armed).
        self._retry: dict[str, tuple[float, float, int]] = {}

    @property
    def max_calls(self) -> int:
        return self._max_calls

    # -- signals from the other parts ---------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def mark_ready(self, queue: str) -> None:
        self._ready.add(queue)
        self._notified[queue] += 1
        self._wake.set()

    def mark_all_ready(self) -> None:
        for queue in self._queues:
            self.mark_ready(queue)
        self._schedule_stale = True

    def schedule_changed(self) -> None:
        """A job was scheduled for later: the earliest run_at may be sooner now."""
        self._schedule_stale = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def _should_lease(self) -> int:
        """How many jobs the next call asks for (0: not now).

        Fewer jobs held than slots means a slot is idle and nothing is
        buffered for it: lease at once whatever fits. With every slot busy,
        lease ahead (the prefetch) once a batch of at least ``prefetch`` fits,
        so that small leases do not follow every finished job.
        """
        core = self._core
        held = len(core.inflight) + self._reserved
        free = core.capacity - held
        if free <= 0:
            return 0
        want = min(free, core.batch_size)
        if want < core.batch_size and held and self._burst_pending():
            return 0  # the rest of the burst is about to finish: refill with its ack flush
        if held < core.concurrency or (core.prefetch and want >= min(core.batch_size, core.prefetch)):
            return want
        return 0

    def _burst_pending(self) -> bool:
        """Whether a partial lease should wait for the ack flush that is due within its interval.

        Jobs leased together and finishing within moments of each other are
        handed back in a few bursts; leasing for the first burst's free slots
        splits every later batch in two. So while acks wait for their flush
        (which starts within ``flush_interval``) and a job we hold started
        within that interval or has not started, the lease waits for that
        flush and rides with it (``ride_along``). A slot whose neighbours run
        longer jobs is refilled at once.
        """
        core = self._core
        completer = core.completer
        if not completer.waiting:
            return False
        recent = time.monotonic() - completer.flush_interval
        return any(not run.started or run.started >= recent for run in core.inflight.values())

    def ride_along(self) -> Rider | None:
        """A lease for the ack flush that starts now to carry, if one is due (reserved); else None."""
        if self._core.stopping or self._failure is not None or self._in_flight >= self._max_calls:
            return None
        core = self._core
        held = len(core.inflight) + self._reserved
        free = core.capacity - held
        want = min(free, core.batch_size)
        if free <= 0 or not (
            held < core.concurrency or (core.prefetch and want >= min(core.batch_size, core.prefetch))
        ):
            return None
        queue = self._next_ready()
        if queue is None:
            return None
        return self._reserve(queue, want)

    def _next_ready(self) -> str | None:
        count = len(self._queues)
        for i in range(count):
            queue = self._queues[(self._rotation + i) % count]
            if queue in self._ready and (not self._calls_per_queue[queue] or queue in self._hot):
                self._rotation = (self._rotation + i + 1) % count
                return queue
        return None

    async def loop(self) -> None:
        try:
            await self._loop()
        except BaseException:
            for task in self._calls:
                task.cancel()
            raise
        finally:
            # A graceful stop: the jobs of calls still in flight are leased; let them arrive.
            if self._calls:
                await asyncio.gather(*self._calls, return_exceptions=True)

    async def _loop(self) -> None:
        core = self._core
        backoff = Backoff()
        while not core.stopping:
            self._wake.clear()
            failure, self._failure = self._failure, None
            if failure is not None:
                self._failed(backoff, failure)
                await core.sleep(backoff.next())
                continue
            if self._succeeded:
                self._succeeded = False
                if backoff.reset():
                    log(logging.INFO, "worker.db_recovered", worker_id=core.worker_id)
            now = time.monotonic()
            if now >= self._poll_due:
                self.mark_all_ready()
                self._poll_due = now + core.poll_interval
                self._limits_stale = not self._limits_refused
            if self._limits_stale:
                self._limits_stale = False
                await self._check_limits()
            if self._timer_due is not None and now >= self._timer_due:
                self.mark_all_ready()
                self._timer_due = None
            for queue, (retry_at, _delay, held) in self._retry.items():
                if now >= retry_at or self._held(queue) < held:
                    self._ready.add(queue)

            want = self._should_lease()
            while want > 0 and self._in_flight < self._max_calls:
                queue = self._next_ready()
                if queue is None:
                    break
                self._launch(queue, want)
                want = self._should_lease()

            idle = want > 0 and not self._in_flight and not self._ready
            if idle and time.monotonic() >= self._wait_renew_at:
                await self._register_wait()
                continue  # lease once more before sleeping: the queues were marked ready

            if idle and self._schedule_stale:
                self._schedule_stale = False
                await self._check_schedule()

            deadline = min(self._poll_due, self._timer_due or self._poll_due)
            for queue, (retry_at, _delay, _held) in self._retry.items():
                if queue not in self._ready:
                    deadline = min(deadline, retry_at)
            timeout = deadline - time.monotonic()
            if timeout > 0 and not core.stopping and not self._wake.is_set():
                await self._wake.wait(timeout)

    def _failed(self, backoff: Backoff, exc: BaseException) -> None:
        if isinstance(exc, InvalidArgument):
            raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
        if isinstance(exc, psycopg.Error) and exc.sqlstate in CONFIG_SQLSTATES:
            raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
        error = fatal(exc)
        if error is not None:
            raise error from exc
        if not isinstance(exc, (*TRANSIENT, psycopg.Error)):
            raise exc
        level = logging.WARNING if backoff.failures == 0 else logging.DEBUG
        log(
            level,
            "worker.db_error",
            worker_id=self._core.worker_id,
            error=f"{type(exc).__name__}: {exc}".strip(),
        )

    def _reserve(self, queue: str, want: int) -> Rider:
        self._reserved += want
        self._calls_per_queue[queue] += 1
        self._in_flight += 1
        return Rider(self, queue, want)

    def _launch(self, queue: str, want: int) -> None:
        rider = self._reserve(queue, want)
        if self._core.completer.carry(rider):  # goes out with the acks waiting, in their statement
            return
        task = asyncio.create_task(self._lease(rider), name=f"openqueue-lease-{queue}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _lease(self, rider: Rider) -> None:
        """One oq_lease call on its own; its jobs go straight to the slots."""
        core = self._core
        rider.sent_at = time.monotonic()
        try:
            leased = await core.conns.run(rider.call(durable=core.durable_leases))
        except Exception as exc:
            rider.land(None, exc)
            return
        except BaseException:
            rider.land(None)
            raise
        rider.land(leased)

    def _landed(
        self, rider: Rider, leased: list[tuple[Leased, float]] | None, exc: BaseException | None
    ) -> None:
        """A lease call came back (``leased``), failed (``exc``) or was never sent (neither)."""
        core, queue, want = self._core, rider.queue, rider.want
        self._reserved -= want
        self._calls_per_queue[queue] -= 1
        self._in_flight -= 1
        self._wake.set()
        if exc is not None:
            self._failure = exc
            return
        if leased is None:  # not sent: the queue stays ready, the loop leases again
            return
        self._succeeded = True
        if len(leased) == want:
            self._hot.add(queue)
        else:
            self._hot.discard(queue)
            if self._notified[queue] == rider.notified:
                self._ready.discard(queue)  # drained, as far as this call could tell
        if leased:
            if enabled(logging.DEBUG):
                log(logging.DEBUG, "worker.leased", worker_id=core.worker_id, queue=queue, count=len(leased))
            dispatch, sent_at = core.dispatch, rider.sent_at
            for item, lease_left in leased:
                dispatch(item, lease_left, sent_at)
        self._flow_retry(queue, len(leased), want)

    def _held(self, queue: str) -> int:
        return sum(1 for run in self._core.inflight.values() if run.job.queue_name == queue)

    def _flow_retry(self, queue: str, got: int, want: int) -> None:
        """Arm or clear the retry of a queue that may be held back by its limits."""
        previous = self._retry.pop(queue, None)
        if got == want:
            return
        if self._limited is not None and queue not in self._limited:
            return  # no limits: a short lease means drained; notifications and the poll
        held = self._held(queue)
        poll = self._core.poll_interval
        if got or (previous is not None and held < previous[2]):
            delay = FLOW_RETRY_MIN  # it brought jobs, or one of its jobs just finished here
        elif previous is not None:
            delay = previous[1] * 2  # nothing: back off
            if delay > poll and not held:
                return  # the poll and notifications take over
            delay = min(delay, poll)
        elif held:
            delay = FLOW_RETRY_MIN
        else:
            return  # drained, or held back by other workers' jobs: notifications and the poll
        self._retry[queue] = (time.monotonic() + delay, delay, held)

    async def _register_wait(self) -> None:
        """oq_wait for our queues, then one more lease round (see the module docstring)."""
        core = self._core
        try:
            await core.conns.run(_sql.wait(self._queues, core.worker_id, WAIT_SECONDS))
        except TRANSIENT:
            self._wait_renew_at = time.monotonic() + 1.0  # try again soon; the lease loop reports outages
            return
        except psycopg.Error as exc:
            self._wait_renew_at = math.inf
            log(
                logging.INFO,
                "worker.wait_unavailable",
                worker_id=core.worker_id,
                error=f"{type(exc).__name__}: {exc}".strip(),
            )
            return
        self._wait_renew_at = time.monotonic() + WAIT_SECONDS / 2
        self.mark_all_ready()

    async def _check_limits(self) -> None:
        """Which of our queues have limits (see the module docstring); on failure, what we knew."""
        core = self._core
        try:
            self._limited = set(await core.conns.run(_sql.limited_queues(self._queues)))
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction) as exc:
            # A role granted the worker's functions one by one, without this
            # one: every queue keeps counting as limited, as before version 8.
            self._limits_refused = True
            self._limited = None
            log(
                logging.INFO,
                "worker.limits_unavailable",
                worker_id=core.worker_id,
                error=f"{type(exc).__name__}: {exc}".strip(),
            )
        except (*TRANSIENT, psycopg.Error):
            return  # what we knew stays; asked again at the next poll (the lease loop reports errors)

    async def _check_schedule(self) -> None:
        """Sleep no longer than until the earliest future run_at of our queues."""
        core = self._core
        try:
            delay = await core.conns.run(_sql.next_run_in(self._queues))
        except (*TRANSIENT, psycopg.Error):
            return  # the poll covers it; the lease loop reports database errors
        if delay is None:
            self._timer_due = None
            return
        self._timer_due = time.monotonic() + max(delay, 0.0) + _SCHEDULE_SLACK
