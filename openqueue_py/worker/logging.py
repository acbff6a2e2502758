"""The worker's log events: one logger, stable event names, ``extra`` fields.

The message of every record starts with the event name (``job.completed``,
``worker.stopping`` ...) followed by its fields as ``key=value`` pairs
(``job.dead job_id=3 queue=send_email attempt=5 error='ValueError: ...'``),
so a program that configured no logging still prints readable lines (Python's
last-resort handler shows WARNING and above on stderr). The event name and
each field are also ``extra`` attributes of the record (``record.event``,
``record.job_id`` ...) for filters and structured handlers. The events, their
levels and meanings are listed in README.md ("Logging"); a test keeps that
table and this package in step. Building a record costs a dict, the message
and a ``LogRecord``: every emitter checks the level first, so a disabled
event costs one ``isEnabledFor`` call.
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
    "port",
    "lease_expires_at",
    "reason",
    "error",
)


def _pair(name: str, value: Any) -> str:
    if isinstance(value, str) and (" " in value or "\n" in value or not value):
        return f"{name}={value!r}"
    return f"{name}={value}"


def message(event: str, fields: dict[str, Any]) -> str:
    """``event key=value ...``: the record's message, the known fields in a fixed order."""
    pairs = [_pair(name, fields[name]) for name in _LOG_FIELDS if fields.get(name) is not None]
    return " ".join((event, *pairs)) if pairs else event


class LogFormatter(logging.Formatter):
    """``time level logger event key=value ...`` (the message already carries the fields)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")


def enabled(level: int) -> bool:
    return logger.isEnabledFor(level)


def log(level: int, event: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, message(event, fields), extra={"event": event, **fields})


def job_fields(job: Job) -> dict[str, Any]:
    return {"job_id": job.id, "queue": job.queue_name, "attempt": job.attempts}
