"""Typed values returned by the clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

import psycopg

from .errors import LeaseGone, OpenQueueError


class JobState(StrEnum):
    """The states of contract section 2."""

    PENDING = "pending"
    PROCESSING = "processing"
    FAILED = "failed"
    COMPLETED = "completed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.DEAD, JobState.CANCELLED)


_EVENT_LOCK = threading.Lock()


class LeaseLost:
    """Set by a Worker when a running job's outcome will not be recorded: stop early.

    Like a ``threading.Event`` a handler can poll (``job.lease_lost.is_set()``)
    or wait on (``job.lease_lost.wait(timeout)``). The worker sets it when a
    heartbeat finds the lease gone (it expired and another worker took the
    job, or the job was cancelled) and when it abandons the job (a forced
    stop, or the grace period ran out). An :class:`AsyncWorker` also cancels
    the handler's task. Jobs leased with ``Client.lease`` are never set.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def __bool__(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (or ``timeout`` seconds); True if set."""
        if self._set:
            return True
        with _EVENT_LOCK:
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if self._set:  # set between the check and the event's creation
            return True
        return event.wait(timeout)

    def set(self) -> None:
        """For the worker: the lease is gone."""
        self._set = True
        with _EVENT_LOCK:
            event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        return f"<LeaseLost {'set' if self._set else 'unset'}>"


class LeaseHandle:
    """What :meth:`Job.ack_in` needs: the lease token, and whether the job was acked that way."""

    __slots__ = ("acked_in", "lease_token")

    def __init__(self, lease_token: UUID) -> None:
        self.lease_token = lease_token
        self.acked_in = False  # Job.ack_in completed it in the caller's transaction


@dataclass(frozen=True, slots=True)
class Job:
    """A job as a worker sees it when it holds the lease.

    ``lease_lost`` (not part of equality) tells a running handler that its
    outcome will not be recorded: see :class:`LeaseLost`. :meth:`ack_in`
    completes the job inside the handler's own transaction.
    """

    id: int
    queue_name: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    lease_lost: LeaseLost = field(default_factory=LeaseLost, compare=False, repr=False)
    lease: LeaseHandle | None = field(default=None, compare=False, repr=False)

    def ack_in(self, conn: Any, result: Any = None) -> Any:
        """Complete this job inside ``conn``'s current transaction (``oq_ack`` with this lease's token).

        The handler's own writes and the completion then commit together, or
        roll back together. Call it last, inside ``with conn.transaction():``
        (or before ``conn.commit()``), and let exceptions leave the block:
        a transaction rolled back takes the ack with it, the handler raises,
        and the worker nacks the job as usual (it is retried). A Worker that
        sees the handler acked the job this way does not ack it again.

        Raises :class:`LeaseGone` when the lease is no longer held (it
        expired and another worker took the job, or it was cancelled), so
        that leaving the block rolls the handler's writes back. With a
        ``psycopg.AsyncConnection`` it returns a coroutine: ``await
        job.ack_in(conn)``.
        """
        from . import _sql  # _sql imports this module

        lease = self.lease
        if lease is None:
            raise OpenQueueError("ack_in needs a job leased through OpenQueue (it carries the lease token)")
        call = _sql.ack(self.id, lease.lease_token, result)

        def settle(rows: Any) -> bool:
            if not call.decode(rows):
                raise LeaseGone(f"job {self.id}: the lease is no longer held; roll back")
            lease.acked_in = True
            return True

        if isinstance(conn, psycopg.AsyncConnection):

            async def ack_async() -> bool:
                cursor = await conn.execute(call.query, call.params)
                return settle(await cursor.fetchall())

            return ack_async()
        return settle(conn.execute(call.query, call.params).fetchall())


@dataclass(frozen=True, slots=True)
class Leased:
    """A leased job and the token that proves the lease."""

    job: Job
    lease_token: UUID
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One row of ``openqueue.jobs``: everything stored about a job."""

    id: int
    queue_name: str
    payload: Any
    status: JobState
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    leased_by: str | None
    lease_expires_at: datetime | None
    result: Any
    errors: list[dict[str, Any]]
    idempotency_key: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One row of ``oq_stats()``."""

    queue_name: str
    pending: int
    processing: int
    failed: int
    completed: int
    dead: int
    cancelled: int
    oldest_due_at: datetime | None
    paused: bool


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One row of ``oq_health()``: a check, what it is about, and what it found."""

    check_name: str
    subject: str | None
    value: int | None
    observed_at: datetime | None
    detail: str | None
