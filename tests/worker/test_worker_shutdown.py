"""Stopping: the grace period is a deadline, a second signal raises like a library, handlers are told.

Each test names the promise it backs in README.md ("Workers", "Guarantees").
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import psycopg

from openqueue_py import Client

from .conftest import WorkerProcess, job_row, wait_until

HANDLERS = "tests.worker.handlers"


def _processing(conn: psycopg.Connection, worker_id: str) -> list[int]:
    rows = conn.execute(
        "select id from openqueue.jobs where status = 'processing' and leased_by = %s order by id",
        (worker_id,),
    ).fetchall()
    return [row[0] for row in rows]


def test_grace_period_is_a_deadline_the_process_exits_and_the_job_runs_again(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    job_id = client.enqueue("slow", {"sleep": 25})
    first = worker_process(
        dsn,
        "--queue",
        f"slow={HANDLERS}:sleepy",
        "--grace-period",
        "1",
        "--lease-seconds",
        "2",
        "--worker-id",
        "abandoner",
    )
    wait_until(lambda: _processing(conn, "abandoner") == [job_id], timeout=30, what="the job leased")
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0, first.log
    took = time.monotonic() - signalled
    assert took < 5, f"the process exited {took:.1f} s after SIGTERM with a 1 s grace period"
    assert "worker.grace_expired" in first.log and "worker.stopped" in first.log
    assert "job.abandoned" in first.log
    # The abandoned lease expires (2 s, no heartbeat any more) and another worker runs the job.
    second = worker_process(
        dsn,
        "--queue",
        f"slow={HANDLERS}:echo",
        "--reap-interval",
        "0.5",
        "--poll-interval",
        "0.5",
        "--worker-id",
        "second",
    )
    wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30, what="the job ran again")
    row = job_row(conn, job_id)
    assert row["attempts"] == 2 and row["leased_by"] == "second"
    assert any("lease expired" in str(error) for error in row["errors"])
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
