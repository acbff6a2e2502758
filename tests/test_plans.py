"""Query plans of the hot paths, read off the functions' own SQL.

oq_lease must stay an index scan over due jobs whatever the number of finished
rows, and oq_reap must only look at processing rows. The claim queries are
taken from the installed function bodies (pg_proc.prosrc), so these tests
follow the SQL that actually runs; where auto_explain is available, the plan of
the real function call is checked as well.
"""

from __future__ import annotations

import re

import psycopg
import pytest

FINISHED = 100_000
PENDING = 1_000


def _claim_query(conn: psycopg.Connection, function: str, occurrence: int = 0) -> str:
    """The n-th `array(select ... for update skip locked)` subquery of a function."""
    row = conn.execute(
        "select prosrc from pg_proc where oid = %s::regprocedure", (f"openqueue.{function}",)
    ).fetchone()
    assert row is not None
    found = re.findall(r"array\(\s*(select .*?for update skip locked)\s*\)\)", row[0], re.S)
    assert len(found) > occurrence, f"no claim subquery #{occurrence} in {function}"
    return found[occurrence]


def _plan(conn: psycopg.Connection, query: str) -> str:
    rows = conn.execute(f"explain (costs off) {query}").fetchall()
    return "\n".join(r[0] for r in rows)


@pytest.fixture
def loaded(conn: psycopg.Connection) -> psycopg.Connection:
    """100,000 completed jobs and 1,000 pending ones in queue 'emails'."""
    conn.execute(
        """
        insert into openqueue.finished_jobs (
            id, queue_name, status, priority, run_at, attempts, max_attempts,
            payload, created_at, finished_at
        )
        select nextval('openqueue.job_id_seq'), 'emails', 'completed', 0, now() - interval '2 hours',
               1, 5, jsonb_build_object('n', g), now() - interval '2 hours', now() - interval '1 hour'
        from generate_series(1, %s) as g
        """,
        (FINISHED,),
    )
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, %s) as g))",
        (PENDING,),
    )
    conn.execute("analyze openqueue.live_jobs")
    conn.execute("analyze openqueue.finished_jobs")
    return conn


def test_lease_is_an_index_scan_over_due_jobs(loaded: psycopg.Connection) -> None:
    query = _claim_query(loaded, "oq_lease(text,text,integer,integer)")
    query = query.replace("oq_lease.queue_name", "'emails'").replace("oq_lease.batch_size", "10")
    with loaded.transaction():
        plan = _plan(loaded, query)
    assert "Index Scan using live_jobs_lease_order" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "finished_jobs" not in plan, plan
    assert "Sort" not in plan, plan  # the index order is the lease order


def test_reap_reads_only_processing_rows(loaded: psycopg.Connection) -> None:
    for occurrence in (0, 1):  # the to-dead and the back-to-pending claims
        query = _claim_query(loaded, "oq_reap()", occurrence)
        with loaded.transaction():
            plan = _plan(loaded, query)
        assert "live_jobs_lease_expiry" in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "finished_jobs" not in plan, plan


def test_lease_function_plan_with_auto_explain(loaded: psycopg.Connection) -> None:
    """The plan of the real oq_lease call, where the server ships auto_explain."""
    try:
        loaded.execute("load 'auto_explain'")
    except psycopg.Error as exc:
        pytest.skip(
            f"auto_explain is not available on this server ({exc}); the lease plan is still checked "
            "here, from the function's own SQL, by test_lease_is_an_index_scan_over_due_jobs"
        )
    notices: list[str] = []
    loaded.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_level = notice",
    ):
        loaded.execute(f"set {setting}")
    with loaded.transaction(force_rollback=True):
        rows = loaded.execute("select * from openqueue.oq_lease('emails', 'w1', batch_size => 10)").fetchall()
    assert len(rows) == 10
    lease_plans = [n for n in notices if "for update skip locked" in n]
    assert lease_plans, notices
    plan = lease_plans[0]
    assert "Index Scan using live_jobs_lease_order" in plan, plan
    assert "Index Scan using live_jobs_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan
