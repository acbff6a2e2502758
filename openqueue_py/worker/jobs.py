"""One leased job as the worker tracks it, from lease to ack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ..models import Job, Leased


@dataclass(slots=True, eq=False)
class Run:
    """A leased job held by this worker: waiting for a slot, running, or waiting for its ack.

    Times are ``time.monotonic()`` values. ``beat_at`` and ``beat_every`` come
    from the lease length the database reported (never from comparing its
    timestamps with the local clock).
    """

    leased: Leased
    beat_at: float
    beat_every: float
    started: float = 0.0
    lost: bool = False  # a heartbeat found the lease gone: no ack will follow

    @property
    def job(self) -> Job:
        return self.leased.job

    @property
    def job_id(self) -> int:
        return self.leased.job.id

    @property
    def lease_token(self) -> UUID:
        return self.leased.lease_token

    @property
    def acked_in(self) -> bool:
        """The handler completed the job in its own transaction (``Job.ack_in``): no ack, no heartbeat."""
        lease = self.leased.job.lease
        return lease is not None and lease.acked_in

    def log_fields(self, duration_s: float | None = None) -> dict[str, Any]:
        job = self.leased.job
        fields: dict[str, Any] = {"job_id": job.id, "queue": job.queue_name, "attempt": job.attempts}
        if duration_s is not None:
            fields["duration_s"] = round(duration_s, 6)
        return fields
