"""One heartbeat loop for every job the worker holds.

Each job's next heartbeat is due a third of the way through its lease, the
lease length being what the database reported (seconds from its ``now()`` to
the new expiry), scheduled on the local monotonic clock: a worker whose wall
clock is off still heartbeats in time. When the earliest job is due, ONE
statement extends every lease due within the next half interval, so jobs
leased together are extended together. A lease found gone (expired and taken
over, or the job cancelled) marks the job lost: it is not heartbeated again,
its handler's outcome is discarded, and the handler is told: ``job.lease_lost``
is set and an async handler's task is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import suppress
from typing import TYPE_CHECKING

import psycopg

from .. import _sql
from .connections import TRANSIENT, Backoff
from .jobs import Run
from .logging import enabled, log

if TYPE_CHECKING:
    from ._core import Core

# Never heartbeat more often than this, whatever the lease says.
MIN_INTERVAL = 0.05


def beat_every(lease_left: float | None) -> float:
    """How long after a lease (or heartbeat) the next heartbeat is due."""
    if lease_left is None:
        return MIN_INTERVAL
    return max(MIN_INTERVAL, lease_left / 3)


class Heartbeat:
    """The heartbeat loop; every oq_heartbeat is given the job's queue name (contract section 10)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._wake = asyncio.Event()
        self._next_at = float("inf")

    def track(self, run: Run) -> None:
        """A newly leased job: wake the loop if it is due before the current sleep ends."""
        if run.beat_at < self._next_at:
            self._wake.set()

    async def loop(self) -> None:
        backoff = Backoff()
        inflight = self._core.inflight
        while True:
            runs = [run for run in inflight.values() if not run.lost and not run.acked_in]
            now = time.monotonic()
            self._next_at = min((run.beat_at for run in runs), default=float("inf"))
            if self._next_at > now:
                self._wake.clear()
                timeout = None if self._next_at == float("inf") else self._next_at - now
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            due = [run for run in runs if run.beat_at <= now + run.beat_every / 2]
            sent_at = time.monotonic()
            try:
                rows = await self._beat(due)
            except (*TRANSIENT, psycopg.Error) as exc:
                log(logging.DEBUG, "worker.db_error", worker_id=self._core.worker_id, error=str(exc).strip())
                delay, now = backoff.next(), time.monotonic()
                for run in due:
                    run.beat_at = now + min(delay, run.beat_every)
                continue
            backoff.reset()
            debug = enabled(logging.DEBUG)
            for job_id, expires_at, lease_left in rows:
                run = inflight.get(job_id)
                if run is None:
                    continue  # finished meanwhile
                if expires_at is None:
                    if run.acked_in:  # the handler's own transaction completed it (Job.ack_in)
                        continue
                    run.lost = True
                    run.job.lease_lost.set()
                    self._core.executor.cancel(run)
                    log(logging.WARNING, "job.lease_lost", worker_id=self._core.worker_id, **run.log_fields())
                    continue
                run.beat_every = beat_every(lease_left)
                run.beat_at = sent_at + run.beat_every
                if debug:
                    log(
                        logging.DEBUG,
                        "job.heartbeat",
                        worker_id=self._core.worker_id,
                        lease_expires_at=expires_at.isoformat(),
                        **run.log_fields(),
                    )

    async def _beat(self, due: list[Run]) -> list[tuple[int, object, float | None]]:
        """Heartbeat ``due`` in one statement; on Citus one statement per queue (each on its node)."""
        core = self._core
        groups: dict[str, list[Run]] = {}
        if getattr(core, "citus", False):
            for run in due:
                groups.setdefault(run.job.queue_name, []).append(run)
        else:
            groups[""] = due
        rows: list[tuple[int, object, float | None]] = []
        for runs in groups.values():
            call = _sql.heartbeat_many(
                [run.job_id for run in runs],
                [run.lease_token for run in runs],
                core.lease_seconds,
                [run.job.queue_name for run in runs],
            )
            rows.extend(await core.conns.run(call))
        return rows
