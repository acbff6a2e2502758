"""The worker's log events: one logger, stable event names, ``extra`` fields.

The message of every record is the event name (``job.completed``,
``worker.stopping`` ...); details are ``extra`` attributes. The events, their
levels and meanings are listed in README.md ("Logging"); a test keeps that
table and this package in step. Building a record costs a dict and a
``LogRecord``: every emitter checks the level first, so a disabled event
costs one ``isEnabledFor`` call.
"""

from __future__ import annotations

import logging
from typing import Any

from ..models import Job

logger = logging.getLogger("openqueue.worker")

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


def enabled(level: int) -> bool:
    return logger.isEnabledFor(level)


def log(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"event": event, **fields})


def job_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue_name, "attempt": job.attempts}
