"""The handler that chaos worker processes run (``tests.chaos.handlers:handle``).

Every execution first writes one row to the ledger table, in its own
transaction, then sleeps (mostly briefly, sometimes longer than a lease so
that heartbeats matter) and then either returns (ack) or raises
:class:`ChaosFailure` (nack). Whether an execution fails is decided from the
job id and the attempt number, so a run is reproducible given its seed.

The ledger lives in the same database, schema ``chaos``; the DSN comes from
``OPENQUEUE_CHAOS_DSN`` and the failure rate from ``OPENQUEUE_CHAOS_FAIL_RATE``.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from typing import Any

import psycopg

from openqueue_py import Job

DSN_ENV = "OPENQUEUE_CHAOS_DSN"
FAIL_RATE_ENV = "OPENQUEUE_CHAOS_FAIL_RATE"
FAILURE_MARK = "ChaosFailure"
# How long a handler keeps retrying its ledger insert through restarts and outages.
RECORD_DEADLINE_S = 90.0

_local = threading.local()


class ChaosFailure(Exception):
    """A failure the handler chose to raise; the job is nacked and retried."""


def plan(job_id: int, attempt: int, fail_rate: float) -> tuple[bool, float]:
    """(fails, seconds to sleep) for one execution, a pure function of the job and attempt."""
    rng = random.Random(f"{job_id}:{attempt}")
    fails = rng.random() < fail_rate
    sleep = rng.uniform(1.0, 4.0) if rng.random() < 0.03 else rng.uniform(0.0, 0.04)
    return fails, sleep


def handle(job: Job) -> dict[str, Any]:
    fails, sleep = plan(job.id, job.attempts, float(os.environ.get(FAIL_RATE_ENV, "0.1")))
    _record(job, "fail" if fails else "ok")
    time.sleep(sleep)
    if fails:
        raise ChaosFailure(f"{FAILURE_MARK} job={job.id} attempt={job.attempts}")
    return {"pid": os.getpid(), "attempt": job.attempts}


def _record(job: Job, outcome: str) -> None:
    """Insert this execution's ledger row; retry through connection loss (same row, no duplicate)."""
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while True:
        try:
            conn = _connection()
            conn.execute(
                "insert into chaos.ledger (job_id, attempt, pid, outcome) values (%s, %s, %s, %s)"
                " on conflict do nothing",
                (job.id, job.attempts, os.getpid(), outcome),
            )
            return
        except (psycopg.OperationalError, psycopg.InterfaceError):
            _drop_connection()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _connection() -> psycopg.Connection:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ[DSN_ENV], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def _drop_connection() -> None:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
