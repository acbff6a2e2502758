"""A worker survives PostgreSQL crashing and coming back."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from openqueue_py import Client, Job

from .conftest import Events, make_worker, running, wait_until


def test_worker_recovers_from_a_postgres_restart_and_finishes_every_job(
    pg_server, dsn: str, conn: psycopg.Connection, events: Events
) -> None:
    if pg_server.restart is None:
        reason = f"the {pg_server.kind} PostgreSQL server cannot be restarted by the test harness"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    # The test server runs with synchronous_commit off; the jobs themselves must survive the crash.
    conn.execute("set synchronous_commit to on")
    ids = Client(conn).enqueue_batch("survive", [{} for _ in range(300)])
    handled: set[int] = set()
    lock = threading.Lock()

    def handle(job: Job) -> None:
        time.sleep(0.01)
        with lock:
            handled.add(job.id)

    def completed() -> int:
        with psycopg.connect(dsn, autocommit=True) as fresh:
            row = fresh.execute("select count(*) from openqueue.jobs where status = 'completed'").fetchone()
        return row[0] if row else 0

    # A short lease: a lease or ack the crash took back (asynchronous commit) returns within seconds.
    worker = make_worker(dsn, {"survive": handle}, concurrency=4, lease_seconds=3, reap_interval=0.5)
    with running(worker) as thread:
        wait_until(lambda: len(handled) >= 40, timeout=60, what="some progress before the restart")
        pg_server.restart()
        wait_until(lambda: _retrying(lambda: completed() == len(ids)), timeout=60, what="every job completed")
        assert thread.is_alive()
    assert handled == set(ids)
    assert (
        events.named("worker.db_error")
        or events.named("job.settle_retry")
        or events.named("worker.listen_lost")
    )
    assert events.named("worker.listening")[-1] is not events.named("worker.listening")[0]  # re-LISTENed


def _retrying(check):
    try:
        return check()
    except psycopg.OperationalError:
        return False  # the server is still starting up
