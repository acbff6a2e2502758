"""A worker survives PostgreSQL crashing and coming back.

The crash is `pg_ctl restart -m immediate`. On the embedded backend that is
the session's own server; an external or Docker server is not the harness's
to crash, so there the test starts a private embedded server of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

import openqueue_py
from openqueue_py import Client, Job
from openqueue_py.embedded import FAST_SETTINGS, EmbeddedPostgres

from .conftest import Events, make_worker, running, wait_until


@pytest.fixture
def crashable(pg_server, dsn: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A database with OpenQueue installed, and a way to crash-restart its server."""
    if pg_server.restart is not None:
        yield dsn, pg_server.restart
        return
    with EmbeddedPostgres(settings=FAST_SETTINGS) as private:
        openqueue_py.install(private.dsn())
        yield private.dsn(), private.restart


def test_worker_recovers_from_a_postgres_restart_and_finishes_every_job(
    crashable: tuple[str, Callable[[], None]], events: Events
) -> None:
    dsn, restart = crashable
    with psycopg.connect(dsn, autocommit=True) as conn:
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
        restart()
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
