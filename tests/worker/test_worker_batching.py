"""The worker's batched paths: acks in one oq_ack_many per batch, one heartbeat
statement for many jobs, one reaper at a time."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from openqueue_py import Client, Job, _sql
from openqueue_py.worker import _core

from .conftest import Events, job_row, make_worker, running, status_counts, wait_until


def test_the_package_keeps_the_public_names() -> None:
    import openqueue_py
    from openqueue_py.worker import AsyncWorker, Fail, LogFormatter, Retry, Worker

    assert (openqueue_py.Worker, openqueue_py.AsyncWorker) == (Worker, AsyncWorker)
    assert (openqueue_py.Retry, openqueue_py.Fail) == (Retry, Fail)
    assert LogFormatter().format is not None


def test_a_burst_is_acked_in_few_transactions(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    ids = client.enqueue_batch("burst", [{"n": n} for n in range(200)])

    def handle(job: Job) -> int:
        return job.payload["n"]

    with running(make_worker(dsn, {"burst": handle}, concurrency=8, batch_size=8)):
        wait_until(lambda: status_counts(conn).get("completed") == 200, timeout=60, what="200 completed")
    # oq_ack_many stamps finished_at with its transaction's now(): one value per call.
    (calls,) = conn.execute(
        "select count(distinct finished_at) from openqueue.jobs where queue_name = 'burst'"
    ).fetchone()
    assert calls <= 200 / 4, f"{calls} ack transactions for 200 jobs"
    results = dict(
        conn.execute("select id, result from openqueue.jobs where queue_name = 'burst'").fetchall()
    )
    assert results == {job_id: n for n, job_id in enumerate(ids)}
    assert len(events.named("job.completed", outcome="completed")) == 200


def test_acks_wait_for_a_full_batch_and_a_graceful_stop_flushes_them(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Acks leave only on a full batch (8) or after a minute: three finished jobs wait ...
    monkeypatch.setattr(_core, "FLUSH_INTERVAL", 60.0)
    ids = client.enqueue_batch("flush", [{}, {}, {}])
    handled: list[int] = []

    def handle(job: Job) -> str:
        handled.append(job.id)
        return "done"

    worker = make_worker(dsn, {"flush": handle}, concurrency=8)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: len(handled) == 3, timeout=30, what="three handled jobs")
        time.sleep(0.5)
        assert {job_row(conn, i)["status"] for i in ids} == {"processing"}
        assert not events.named("job.completed")
        # ... until the stop: run() returns only once they are acked.
        worker.stop()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        worker.stop(force=True)
        thread.join(30)
    assert [job_row(conn, i)["status"] for i in ids] == ["completed"] * 3
    assert [job_row(conn, i)["result"] for i in ids] == ["done"] * 3
    assert len(events.named("job.completed")) == 3
    (calls,) = conn.execute("select count(distinct finished_at) from openqueue.jobs").fetchone()
    assert calls == 1


def test_one_heartbeat_statement_extends_every_running_job(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    ids = client.enqueue_batch("beats", [{} for _ in range(4)])

    def handle(job: Job) -> None:
        time.sleep(1.5)

    with running(make_worker(dsn, {"beats": handle}, concurrency=4, lease_seconds=1)):
        wait_until(lambda: status_counts(conn).get("completed") == 4, timeout=30, what="4 completed")
    first_beats = {}
    for record in events.named("job.heartbeat"):
        first_beats.setdefault(record.job_id, record.lease_expires_at)
    assert set(first_beats) == set(ids)
    # The four leases were extended by one statement: one now(), one new expiry.
    assert len(set(first_beats.values())) == 1
    assert all(job_row(conn, i)["attempts"] == 1 for i in ids)


def test_only_one_worker_reaps_at_a_time(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    job_id = client.enqueue("expired", {})
    client.lease("expired", "gone")
    conn.execute(
        "update openqueue.jobs set lease_expires_at = now() - interval '1 minute' where id = %s", (job_id,)
    )
    # Another worker is reaping: it holds the reaper's lock.
    holder = psycopg.connect(dsn, autocommit=True)
    holder.execute("select pg_advisory_lock(hashtextextended('openqueue.reap', 0))")
    try:
        with running(make_worker(dsn, {"other": print}, reap_interval=0.05)):
            time.sleep(1.0)  # twenty reap rounds, all skipped
            assert job_row(conn, job_id)["status"] == "processing"
            assert not events.named("worker.reaped")
            holder.execute("select pg_advisory_unlock(hashtextextended('openqueue.reap', 0))")
            wait_until(lambda: job_row(conn, job_id)["status"] == "pending", timeout=10, what="the reap")
            assert events.named("worker.reaped", count=1)
    finally:
        holder.close()
    assert [e["error"] for e in job_row(conn, job_id)["errors"]] == ["lease expired"]


def test_in_one_ack_batch_only_the_lost_lease_is_rejected(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    ids = client.enqueue_batch("mixed", [{}, {}, {}])
    started, release = threading.Semaphore(0), threading.Event()

    def handle(job: Job) -> str:
        started.release()
        release.wait(30)
        return "ok"

    try:
        with running(make_worker(dsn, {"mixed": handle}, concurrency=3, lease_seconds=30)):
            for _ in ids:
                assert started.acquire(timeout=30)
            assert client.cancel(ids[1]) is True
            release.set()
            wait_until(
                lambda: len(events.named("job.completed")) == 2 and events.named("job.ack_rejected"),
                timeout=30,
                what="the batch's outcomes",
            )
    finally:
        release.set()
    assert {r.job_id for r in events.named("job.completed", outcome="completed")} == {ids[0], ids[2]}
    assert [r.job_id for r in events.named("job.ack_rejected", outcome="lease_lost")] == [ids[1]]
    assert [job_row(conn, i)["status"] for i in ids] == ["completed", "cancelled", "completed"]
    (calls,) = conn.execute(
        "select count(distinct finished_at) from openqueue.jobs where status = 'completed'"
    ).fetchone()
    assert calls == 1


@pytest.mark.parametrize("durable", [False, True])
def test_leases_commit_either_way(dsn: str, client: Client, conn: psycopg.Connection, durable: bool) -> None:
    ids = client.enqueue_batch("commit_mode", [{}, {}])
    with running(make_worker(dsn, {"commit_mode": lambda job: job.id}, durable_leases=durable)):
        wait_until(lambda: status_counts(conn).get("completed") == 2, timeout=30, what="2 completed")
    assert [job_row(conn, i)["result"] for i in ids] == ids
    # The commit mode is set for the lease's own transaction only: nothing leaks into the session.
    client.enqueue("commit_mode", {})
    before = conn.execute("show synchronous_commit").fetchone()
    call = _sql.lease_timed("commit_mode", "w", None, 1, durable)
    assert len(call.decode(conn.execute(call.query, call.params).fetchall())) == 1
    assert conn.execute("show synchronous_commit").fetchone() == before
