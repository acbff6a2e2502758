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
        # Version 2: the running rows through a partial index on id (not on
        # lease_expires_at, so that heartbeats are HOT updates).
        assert "live_jobs_in_flight" in plan, plan
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
    # The claim, not the promotion of scheduled jobs that runs before it (version 2).
    # (version 5 draws the token as md5(seed || id): gen_random_uuid() is refused inside
    # an UPDATE of a Citus table.)
    lease_plans = [n for n in notices if "for update skip locked" in n and "lease_token = md5(" in n]
    assert lease_plans, notices
    plan = lease_plans[0]
    assert "Index Scan using live_jobs_lease_order" in plan, plan
    assert "Index Scan using live_jobs_pkey" in plan, plan
    assert "Seq Scan" not in plan, plan


FUTURE = 100_000


def _buffers(conn: psycopg.Connection, query: str) -> tuple[int, str]:
    """Shared buffers touched by the execution of `query` (planning excluded), and the plan."""
    rows = conn.execute(f"explain (analyze, buffers, costs off, timing off) {query}").fetchall()
    text = "\n".join(r[0] for r in rows)
    # The top node's Buffers line: the whole execution (children are included in it).
    top = next((line for line in text.split("Planning")[0].splitlines() if "Buffers:" in line), "")
    return sum(int(n) for n in re.findall(r"(?:hit|read)=(\d+)", top)), text


@pytest.fixture
def future_heavy(conn: psycopg.Connection) -> psycopg.Connection:
    """100,000 jobs scheduled for tomorrow at priority 10 in front of 100 due ones at priority 0."""
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, %s) as g), priority => 10, "
        "run_at => now() + interval '1 day')",
        (FUTURE,),
    )
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, 100) as g))"
    )
    conn.execute("vacuum analyze openqueue.live_jobs")
    return conn


def test_lease_reads_o_batch_entries_with_many_future_higher_priority_jobs(future_heavy) -> None:
    """Issue 6: future jobs at a higher priority do not sit in front of due ones (no skip scan needed)."""
    conn = future_heavy
    claim = (
        _claim_query(conn, "oq_lease(text,text,integer,integer)")
        .replace("oq_lease.queue_name", "'emails'")
        .replace("oq_lease.batch_size", "10")
    )
    promote = (
        _claim_query(conn, "_promote_due(text,integer)")
        .replace("_promote_due.queue_name", "'emails'")
        .replace("_promote_due.max_rows", "1000")
    )
    with conn.transaction(force_rollback=True):
        promote_buffers, promote_plan = _buffers(conn, promote)
        claim_buffers, claim_plan = _buffers(conn, claim)
    assert "live_jobs_scheduled" in promote_plan, promote_plan
    assert "live_jobs_lease_order" in claim_plan, claim_plan
    assert "Sort" not in claim_plan, claim_plan
    # Nothing to promote: one descent of a 3-level index. Claim: 10 rows.
    assert promote_buffers < 10, promote_plan
    assert claim_buffers < 40, claim_plan
    scan = r"Index Scan using live_jobs_lease_order .*\(actual rows=10(\.00)? "
    assert re.search(scan, claim_plan), claim_plan

    # What version 1's index would have read: every future job first.
    v1 = (
        "select c.id from openqueue.live_jobs as c where c.queue_name = 'emails' "
        "and c.status in ('pending', 'failed') and c.run_at <= now() "
        "order by c.priority desc, c.run_at, c.id limit 10"
    )
    conn.execute(
        "create index v1_lease_order on openqueue.live_jobs (queue_name, priority desc, run_at, id) "
        "where status in ('pending', 'failed')"
    )
    v1_buffers, v1_plan = _buffers(conn, v1)
    if conn.info.server_version < 180000:  # 18 has skip scan, which rescues the old index
        assert v1_buffers > 20 * claim_buffers, (v1_plan, claim_plan)

    # And the real call leases the due jobs, in lease order.
    with conn.transaction(force_rollback=True):
        rows = conn.execute("select id, priority from openqueue.oq_lease('emails', 'w', batch_size => 10)")
        leased = rows.fetchall()
    assert len(leased) == 10 and {p for _, p in leased} == {0}
    assert [i for i, _ in leased] == sorted(i for i, _ in leased)


@pytest.fixture
def busy_queue(conn: psycopg.Connection) -> psycopg.Connection:
    """50,000 due jobs and 5,000 scheduled for tomorrow, analyzed but not vacuumed (between vacuums)."""
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, 5000) as g), run_at => now() + interval '1 day')"
    )
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, 50000) as g))"
    )
    conn.execute("analyze openqueue.live_jobs")
    return conn


def test_one_lease_call_stays_index_descents_on_a_busy_queue(busy_queue) -> None:
    """The whole oq_lease call, not only its claim, reads O(batch) buffers.

    Version 7 looks for a job fallen due before it promotes. Written as an
    EXISTS, that probe was a sequential scan here (the planner expects one
    of the many scheduled-or-due rows to match at once; none does): 1,058
    buffers on this table, 1 s at 11,000,000 rows. The buffers of a
    function scan include those of every statement the function runs.
    """
    conn = busy_queue
    lease = "select * from openqueue.oq_lease('emails', 'w', batch_size => 10)"
    with conn.transaction(force_rollback=True):
        conn.execute(lease)  # warm: the session's first call also reads the catalogs
    with conn.transaction(force_rollback=True):
        buffers, plan = _buffers(conn, lease)
    assert re.search(r"\(actual .*rows=10(\.00)? ", plan), plan
    # About 100 (settings, the probe, the claim, the UPDATE of 10 rows); the seq scan read 1,000 more.
    assert buffers < 300, plan


def test_lease_promotes_jobs_whose_time_has_come_in_lease_order(conn: psycopg.Connection) -> None:
    """Jobs promoted from the scheduled index take their exact place among the already-due ones."""
    ids = {}
    for name, priority, offset in [
        ("due_low", 0, "-10 seconds"),
        ("sched_high", 5, "1 hour"),
        ("due_high_late", 5, "-1 second"),
        ("sched_low_old", 0, "1 hour"),
        ("future", 9, "2 hours"),
    ]:
        ids[name] = conn.execute(
            "select openqueue.oq_enqueue('o', '{}', priority => %s, run_at => now() + %s::interval)",
            (priority, offset),
        ).fetchone()[0]
    # Time passes for the two scheduled ones: their run_at is now in the past,
    # the high one earlier than the already-due high one.
    conn.execute(
        "update openqueue.live_jobs set run_at = now() - interval '5 seconds' where id = %s",
        (ids["sched_high"],),
    )
    conn.execute(
        "update openqueue.live_jobs set run_at = now() - interval '1 minute' where id = %s",
        (ids["sched_low_old"],),
    )
    rows = conn.execute("select id from openqueue.oq_lease('o', 'w', batch_size => 10)").fetchall()
    assert [r[0] for r in rows] == [
        ids["sched_high"],
        ids["due_high_late"],
        ids["sched_low_old"],
        ids["due_low"],
    ]
