"""Concurrent workers (CONTRACT.md sections 2 and 3: at most one valid lease, SKIP LOCKED)."""

from __future__ import annotations

import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from . import helpers
from .helpers import Background, enqueue, enqueue_batch, job, job_count, lease, lease_one

module_database = helpers.module_database
dsn = helpers.fresh_dsn

WORKERS = 8
JOBS = 2000


def test_eight_workers_lease_every_job_exactly_once(dsn, conn):
    expected = enqueue_batch(conn, "q", [{"n": i} for i in range(JOBS)])
    assert len(expected) == JOBS
    start = threading.Barrier(WORKERS)

    def worker(number: int):
        got = []
        with psycopg.connect(dsn, autocommit=True) as own:
            start.wait()
            while batch := lease(own, "q", f"worker-{number}", batch_size=7):
                got += [(r["id"], r["lease_token"], r["attempts"]) for r in batch]
        return got

    threads = [Background(lambda n=n: worker(n)) for n in range(WORKERS)]
    for t in threads:
        t.start()
    results = [t.result(timeout=60) for t in threads]

    leased_ids = [job_id for got in results for job_id, _, _ in got]
    assert len(leased_ids) == JOBS
    assert len(set(leased_ids)) == JOBS  # no job handed out twice
    assert set(leased_ids) == set(expected)
    assert {attempts for got in results for _, _, attempts in got} == {1}
    tokens = {token for got in results for _, token, _ in got}
    assert len(tokens) == JOBS
    assert conn.execute(
        "select status, count(*), min(attempts), max(attempts) from openqueue.jobs group by status"
    ).fetchall() == [("processing", JOBS, 1, 1)]


def test_a_row_locked_by_an_open_lease_is_skipped_not_waited_on(dsn, conn):
    first = enqueue(conn, "q")
    second = enqueue(conn, "q")
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        held = lease_one(a, "q", "a")  # a's transaction stays open
        assert held["id"] == first
        b.execute("set lock_timeout = '5s'")
        started = time.monotonic()
        got = lease_one(b, "q", "b")
        assert time.monotonic() - started < 2  # did not wait for a's transaction
        assert got["id"] == second
        assert lease(b, "q") == []  # the first job is a's, even uncommitted
        a.rollback()
    # a rolled back: the first job was never leased
    row = job(conn, first)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    assert lease_one(conn, "q")["id"] == first


def test_concurrent_enqueues_with_one_key_create_one_job(dsn, conn):
    sql = "select openqueue.oq_enqueue(queue_name => 'q', payload => %s, idempotency_key => 'once')"
    start = threading.Barrier(WORKERS)

    def producer(number: int) -> int:
        with psycopg.connect(dsn, autocommit=True) as own:
            start.wait()
            return own.execute(sql, [Jsonb({"from": number})]).fetchone()[0]

    threads = [Background(lambda n=n: producer(n)) for n in range(WORKERS)]
    for t in threads:
        t.start()
    ids = {t.result() for t in threads}
    assert len(ids) == 1
    assert job_count(conn) == 1


def test_reaping_under_load_never_lets_two_leases_ack_one_job(dsn, conn):
    """Leases are expired and reaped while workers ack: exactly one ack per job succeeds."""
    total = 400
    enqueue_batch(conn, "q", [{}] * total, max_attempts=1000)
    done = threading.Event()

    def reaper() -> int:
        reclaimed = 0
        with psycopg.connect(dsn, autocommit=True) as own:
            while not done.is_set():
                own.execute(
                    "update openqueue.jobs set lease_expires_at = now() - interval '1 minute'"
                    " where status = 'processing'"
                )
                reclaimed += helpers.reap(own)
        return reclaimed

    def worker(number: int) -> list[tuple[int, bool]]:
        outcomes = []
        with psycopg.connect(dsn, autocommit=True) as own:
            while True:
                batch = lease(own, "q", f"worker-{number}", batch_size=3)
                if not batch:
                    # nothing due right now: done once every job is completed, else a
                    # reclaimed job will come back
                    left = own.execute("select count(*) from openqueue.jobs where status <> 'completed'")
                    if left.fetchone()[0] == 0:
                        break
                    continue
                for r in batch:
                    outcomes.append((r["id"], helpers.ack(own, r["id"], r["lease_token"])))
        return outcomes

    reap_thread = Background(reaper)
    reap_thread.start()
    workers = [Background(lambda n=n: worker(n)) for n in range(WORKERS)]
    for t in workers:
        t.start()
    outcomes = [o for t in workers for o in t.result(timeout=60)]
    done.set()
    reclaimed = reap_thread.result()

    successes = [job_id for job_id, ok in outcomes if ok]
    assert len(successes) == len(set(successes)) == total
    assert (
        conn.execute("select count(*) from openqueue.jobs where status = 'completed'").fetchone()[0] == total
    )
    # the race really happened, and every reclaimed lease had its ack refused
    assert reclaimed > 0
    assert sum(1 for _, ok in outcomes if not ok) == reclaimed
