"""oq_next_run_at: the earliest future run_at among waiting jobs of the given queues."""

from __future__ import annotations

import re

import psycopg
import pytest

from . import helpers

module_database = helpers.module_database
dsn = helpers.fresh_dsn


def _enqueue(conn: psycopg.Connection, queue: str, seconds: float, priority: int = 0) -> int:
    row = conn.execute(
        "select openqueue.oq_enqueue(queue_name => %s, payload => '{}', priority => %s, "
        "run_at => now() + make_interval(secs => %s))",
        (queue, priority, seconds),
    ).fetchone()
    return row[0]


def _next(conn: psycopg.Connection, *queues: str):
    return conn.execute("select openqueue.oq_next_run_at(%s::text[])", (list(queues),)).fetchone()[0]


def _run_at(conn: psycopg.Connection, job_id: int):
    return conn.execute("select run_at from openqueue.jobs where id = %s", (job_id,)).fetchone()[0]


def test_null_when_nothing_waits_in_the_future(conn: psycopg.Connection) -> None:
    assert _next(conn, "q") is None
    _enqueue(conn, "q", -5)  # due already: not "next"
    assert _next(conn, "q") is None


def test_earliest_across_priorities_and_queues(conn: psycopg.Connection) -> None:
    _enqueue(conn, "a", 300, priority=10)
    _enqueue(conn, "a", 200, priority=-3)
    soonest_a = _enqueue(conn, "a", 50, priority=0)
    _enqueue(conn, "a", 100, priority=0)
    soonest_b = _enqueue(conn, "b", 20, priority=7)
    _enqueue(conn, "other", 1)
    assert _next(conn, "a") == _run_at(conn, soonest_a)
    assert _next(conn, "a", "b") == _run_at(conn, soonest_b)
    assert _next(conn, "nobody") is None


def test_finished_and_running_jobs_do_not_count(conn: psycopg.Connection) -> None:
    cancelled = _enqueue(conn, "q", 10)
    conn.execute("select openqueue.oq_cancel(%s)", (cancelled,))
    assert _next(conn, "q") is None
    later = _enqueue(conn, "q", 60)
    assert _next(conn, "q") == _run_at(conn, later)


def test_a_failed_job_waiting_for_its_retry_counts(conn: psycopg.Connection) -> None:
    conn.execute("select openqueue.oq_enqueue('q', '{}')")
    job_id, token = conn.execute("select id, lease_token from openqueue.oq_lease('q', 'w')").fetchone()
    conn.execute("select openqueue.oq_nack(%s, %s, 'boom', interval '45 seconds')", (job_id, token))
    assert _next(conn, "q") == _run_at(conn, job_id)


def test_null_queue_names_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="queue_names"):
        conn.execute("select openqueue.oq_next_run_at(null)")


def _buffers(conn: psycopg.Connection, query: str) -> int:
    plan = conn.execute(f"explain (analyze, buffers, costs off, timing off) {query}").fetchall()
    text = " ".join(row[0] for row in plan)
    return sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", text.split("Planning")[0]))


def test_many_scheduled_jobs_stay_cheap(conn: psycopg.Connection) -> None:
    """A skip scan: buffers read grow with the priorities in use, not with the scheduled jobs."""
    conn.execute(
        "insert into openqueue.live_jobs (queue_name, priority, run_at, max_attempts, payload) "
        "select 'big', g % 3, now() + make_interval(secs => 10 + g), 5, '{}' "
        "from generate_series(1, 50000) as g"
    )
    conn.execute("vacuum analyze openqueue.live_jobs")
    expected = conn.execute(
        "select min(run_at) from openqueue.live_jobs where queue_name = 'big' and run_at > now()"
    ).fetchone()[0]
    assert _next(conn, "big") == expected  # also warms the function's cached plans
    full_scan = _buffers(conn, "select min(run_at) from openqueue.live_jobs where queue_name = 'big'")
    skip_scan = _buffers(conn, "select openqueue.oq_next_run_at('{big}')")
    assert full_scan > 500, full_scan
    assert skip_scan < 60, skip_scan  # 3 priorities: 7 descents of a 3-level index
