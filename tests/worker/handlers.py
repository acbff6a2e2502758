"""Handlers that worker subprocesses import (``tests.worker.handlers:NAME``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from openqueue_py import Job


def echo(job: Job) -> Any:
    """Store the payload as the result."""
    return job.payload


def sleepy(job: Job) -> dict[str, Any]:
    """Sleep ``payload["sleep"]`` seconds (default 1), then succeed."""
    seconds = float(job.payload.get("sleep", 1.0))
    time.sleep(seconds)
    return {"slept": seconds}


async def async_echo(job: Job) -> Any:
    await asyncio.sleep(0)
    return job.payload


# For --app: a dict of queue name -> handler.
app = {"q1": echo, "q2": echo}

# For --app errors: not a dict.
not_a_dict = 42
