"""Handlers for the README's command-line worker example.

openqueue worker --dsn "$DSN" --queue send_email=examples.tasks:send_email --concurrency 4
"""

from __future__ import annotations

import logging

from openqueue_py import Fail, Job

log = logging.getLogger(__name__)


def send_email(job: Job) -> dict:
    """Pretend to send an email; the return value is stored as the job's result."""
    address = job.payload.get("to", "")
    if "@" not in address:
        raise Fail(f"not an email address: {address!r}")  # retrying cannot help: dead at once
    log.info("sending email to %s", address)
    return {"sent_to": address}
