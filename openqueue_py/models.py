"""Typed values returned by the clients."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


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


@dataclass(frozen=True, slots=True)
class Job:
    """A job as a worker sees it when it holds the lease."""

    id: int
    queue_name: str
    payload: Any
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    created_at: datetime


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


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One row of ``oq_health()``: a check, what it is about, and what it found."""

    check_name: str
    subject: str | None
    value: int | None
    observed_at: datetime | None
    detail: str | None
