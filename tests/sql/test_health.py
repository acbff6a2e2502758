"""oq_health(): dead tuples and vacuum of the hot tables, the oldest xmin, the oldest due job per queue."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg

from . import helpers
from .helpers import ack_many, enqueue, enqueue_batch, job, lease

module_database = helpers.module_database
dsn = helpers.fresh_dsn


def health(conn) -> list[dict]:
    return helpers.call(conn, "oq_health").fetchall()


def by_check(rows, check_name) -> dict[str, dict]:
    return {r["subject"]: r for r in rows if r["check_name"] == check_name}


def test_health_columns(conn):
    cur = conn.execute("select * from openqueue.oq_health()")
    assert [c.name for c in cur.description] == ["check_name", "subject", "value", "observed_at", "detail"]


def test_table_rows_and_dead_tuples(conn, dsn):
    ids = enqueue_batch(conn, "q", [{} for _ in range(20)])
    held = lease(conn, "q", batch_size=20)
    assert len(ack_many(conn, [r["id"] for r in held], [r["lease_token"] for r in held])) == 20
    conn.execute("select pg_stat_force_next_flush()") if conn.info.server_version >= 150000 else None
    conn.execute("select 1")
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(dsn, autocommit=True) as other:
            rows = health(other)
        dead = by_check(rows, "dead_tuples")
        if dead.get("live_jobs", {}).get("value") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert set(dead) == {"live_jobs", "finished_jobs"}
    assert set(by_check(rows, "live_tuples")) == {"live_jobs", "finished_jobs"}
    assert set(by_check(rows, "last_vacuum")) == {"live_jobs", "finished_jobs"}
    assert dead["live_jobs"]["value"] >= 20  # 20 inserted, updated and deleted: all dead now
    assert by_check(rows, "live_tuples")["finished_jobs"]["value"] == len(ids)
    assert "% of" in dead["live_jobs"]["detail"]

    conn.execute("vacuum openqueue.live_jobs")
    conn.execute("select pg_stat_force_next_flush()") if conn.info.server_version >= 150000 else None
    conn.execute("select 1")
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(dsn, autocommit=True) as other:
            vacuumed = by_check(health(other), "last_vacuum")["live_jobs"]
        if vacuumed["observed_at"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert vacuumed["observed_at"] is not None


def test_oldest_xmin_names_the_session_holding_back_vacuum(conn, dsn):
    with psycopg.connect(dsn) as holder:
        holder.execute("set application_name = 'long-report'")
        holder.execute("set transaction isolation level repeatable read")
        holder.execute("select count(*) from openqueue.jobs")  # takes and keeps a snapshot
        conn.execute("select txid_current()")  # the clock moves on
        enqueue(conn, "q")
        rows = [r for r in health(conn) if r["check_name"] == "oldest_xmin"]
        assert len(rows) == 1
        (row,) = rows
        assert row["subject"] == f"backend {holder.info.backend_pid}"
        assert row["value"] >= 1
        assert row["observed_at"] is not None
        assert "long-report" in row["detail"]
        holder.rollback()


def test_oldest_due_job_per_queue(conn):
    old = enqueue(conn, "a", run_at=helpers.db_now(conn) - timedelta(minutes=5))
    enqueue(conn, "a")
    enqueue(conn, "b", run_at=helpers.db_now(conn) + timedelta(hours=1))  # not due: no row
    newer = enqueue(conn, "c")
    due = by_check(health(conn), "oldest_due_job")
    assert set(due) == {"a", "c"}
    assert due["a"]["observed_at"] == job(conn, old)["run_at"]
    assert 299 <= due["a"]["value"] <= 400
    assert due["a"]["detail"] == f"job {old}"
    assert due["c"]["detail"] == f"job {newer}"
