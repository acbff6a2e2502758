"""The lease loop: keeps the worker's slots supplied with due jobs.

* A queue is *ready* when a notification named it, a poll came due, or its
  last lease call returned a full batch. A lease round asks each ready queue
  for up to ``batch_size`` jobs (never more than the free capacity) in one
  ``oq_lease`` call; each row carries its lease length as the database
  computed it.
* Capacity is ``concurrency + prefetch``: with a prefetch, jobs are leased
  while every slot is still busy, so a slot that finishes finds its next job
  waiting instead of a round trip (see ``_should_lease``).
* With nothing ready it sleeps until the next poll (``poll_interval``) or the
  earliest future ``run_at`` of its queues, whichever is sooner; that delay is
  computed by the database (``oq_next_run_at(...) - now()``), never from the
  local clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING

import psycopg

from .. import _sql
from ..errors import InvalidArgument, WorkerError
from .connections import CONFIG_SQLSTATES, TRANSIENT, Backoff
from .logging import log

if TYPE_CHECKING:
    from ._core import Core

# A few milliseconds late for a scheduled job, so that now() in oq_lease has passed run_at.
_SCHEDULE_SLACK = 0.01


class Fetcher:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._queues = core.queues
        self._ready: set[str] = set(core.queues)
        self._wake = asyncio.Event()
        self._rotation = 0
        self._poll_due = 0.0
        self._timer_due: float | None = None
        self._schedule_stale = True

    # -- signals from the other parts ---------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def mark_ready(self, queue: str) -> None:
        self._ready.add(queue)
        self._wake.set()

    def mark_all_ready(self) -> None:
        self._ready.update(self._queues)
        self._schedule_stale = True
        self._wake.set()

    def schedule_changed(self) -> None:
        """A job was scheduled for later: the earliest run_at may be sooner now."""
        self._schedule_stale = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    def _should_lease(self) -> int:
        """How many jobs to ask for now (0: not now).

        Fewer jobs held than slots means a slot is idle and nothing is
        buffered for it: lease at once whatever fits. With every slot busy,
        lease ahead (the prefetch) once a batch of at least ``prefetch`` fits,
        so that small leases do not follow every finished job.
        """
        core = self._core
        held = len(core.inflight)
        free = core.capacity - held
        if free <= 0:
            return 0
        want = min(free, core.batch_size)
        if held < core.concurrency or (core.prefetch and want >= min(core.batch_size, core.prefetch)):
            return want
        return 0

    async def loop(self) -> None:
        core = self._core
        backoff = Backoff()
        while not core.stopping:
            self._wake.clear()
            now = time.monotonic()
            if now >= self._poll_due:
                self.mark_all_ready()
                self._poll_due = now + core.poll_interval
            if self._timer_due is not None and now >= self._timer_due:
                self.mark_all_ready()
                self._timer_due = None
            want = self._should_lease()

            if want > 0 and self._ready:
                try:
                    await self._lease_round(want)
                except TRANSIENT as exc:
                    self._db_error(backoff, exc)
                    await core.sleep(backoff.next())
                    continue
                except InvalidArgument as exc:
                    raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
                except psycopg.Error as exc:
                    if exc.sqlstate in CONFIG_SQLSTATES:
                        raise WorkerError(f"cannot lease with this configuration: {exc}") from exc
                    self._db_error(backoff, exc)
                    await core.sleep(backoff.next())
                    continue
                if backoff.reset():
                    log(logging.INFO, "worker.db_recovered", worker_id=core.worker_id)
                continue

            if want > 0 and self._schedule_stale:
                self._schedule_stale = False
                await self._check_schedule()

            deadline = min(self._poll_due, self._timer_due or self._poll_due)
            timeout = deadline - time.monotonic()
            if timeout > 0 and not core.stopping and not self._wake.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    def _db_error(self, backoff: Backoff, exc: BaseException) -> None:
        level = logging.WARNING if backoff.failures == 0 else logging.DEBUG
        log(
            level,
            "worker.db_error",
            worker_id=self._core.worker_id,
            error=f"{type(exc).__name__}: {exc}".strip(),
        )

    async def _lease_round(self, want: int) -> None:
        """One oq_lease call per ready queue, together for up to ``want`` jobs."""
        core = self._core
        count = len(self._queues)
        order = (
            [self._queues[(self._rotation + i) % count] for i in range(count)] if count > 1 else self._queues
        )
        self._rotation = (self._rotation + 1) % count
        self._schedule_stale = True
        for queue in order:
            if want <= 0 or core.stopping:
                return
            if queue not in self._ready:
                continue
            # Discard first: a notification arriving during the call marks it ready again.
            self._ready.discard(queue)
            sent_at = time.monotonic()
            try:
                leased = await core.conns.run(
                    _sql.lease_timed(queue, core.worker_id, core.lease_seconds, want)
                )
            except BaseException:
                self._ready.add(queue)
                raise
            if len(leased) == want:
                self._ready.add(queue)  # probably more where these came from
            if leased:
                log(logging.DEBUG, "worker.leased", worker_id=core.worker_id, queue=queue, count=len(leased))
                for item, lease_left in leased:
                    core.dispatch(item, lease_left, sent_at)
            want -= len(leased)

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
