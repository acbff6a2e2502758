"""Contract audit (CONTRACT.md sections 1-6) of schema version 3's layout.

Version 2 changed how the contract is kept without changing the contract: the
`due` flag with promotion in oq_lease, finished-job counters kept by statement
triggers, oq_ack_many, bounded purges, notify modes, SECURITY DEFINER. Each
test here is named after the clause it pins and would fail if the new layout
broke it. Jobs that fall due by the passing of time (not by an UPDATE, which
re-files them at once) are made with a run_at a fraction of a second ahead
and a short sleep: the promotion path is only exercised that way.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta

import psycopg
import pytest

from . import helpers
from .helpers import (
    ack,
    ack_many,
    cancel,
    configure,
    db_now,
    enqueue,
    enqueue_batch,
    expire_lease,
    heartbeat,
    job,
    lease,
    lease_one,
    make_due,
    make_job,
    nack,
    purge,
    reap,
    replay,
    scalar,
    stats,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


def soon(conn: psycopg.Connection, ms: int) -> datetime:
    """A run_at `ms` milliseconds ahead of the server's clock."""
    return conn.execute("select clock_timestamp() + make_interval(secs => %s / 1000.0)", [ms]).fetchone()[0]


def wait_past(conn: psycopg.Connection, moment: datetime) -> None:
    """Sleep until the server's clock has passed `moment`."""
    while conn.execute("select clock_timestamp() <= %s", [moment]).fetchone()[0]:
        time.sleep(0.05)


def lease_all(conn: psycopg.Connection, queue_name: str = "q") -> list[int]:
    """Lease one job at a time until nothing is due: the ids in the order they came."""
    order = []
    while rows := lease(conn, queue_name):
        order.append(rows[0]["id"])
    return order


# --- section 3: the signatures ------------------------------------------------------------

SIGNATURES = {
    "oq_enqueue": (
        "queue_name text, payload jsonb, priority integer DEFAULT 0, run_at timestamp with time zone"
        " DEFAULT now(), max_attempts integer DEFAULT NULL::integer, idempotency_key text DEFAULT NULL::text",
        "bigint",
    ),
    "oq_enqueue_batch": (
        "queue_name text, payloads jsonb, priority integer DEFAULT 0, run_at timestamp with time zone"
        " DEFAULT now(), max_attempts integer DEFAULT NULL::integer",
        "SETOF bigint",
    ),
    "oq_lease": (
        "queue_name text, worker_id text, lease_seconds integer DEFAULT NULL::integer,"
        " batch_size integer DEFAULT 1",
        "TABLE(id bigint, payload jsonb, priority integer, attempts integer, max_attempts integer,"
        " run_at timestamp with time zone, created_at timestamp with time zone, lease_token uuid,"
        " lease_expires_at timestamp with time zone)",
    ),
    "oq_heartbeat": (
        "job_id bigint, lease_token uuid, lease_seconds integer DEFAULT NULL::integer,"
        " queue_name text DEFAULT NULL::text",
        "timestamp with time zone",
    ),
    "oq_ack": (
        "job_id bigint, lease_token uuid, result jsonb DEFAULT NULL::jsonb,"
        " queue_name text DEFAULT NULL::text",
        "boolean",
    ),
    "oq_ack_many": (
        "job_ids bigint[], lease_tokens uuid[], results jsonb[] DEFAULT NULL::jsonb[],"
        " queue_name text DEFAULT NULL::text",
        "SETOF bigint",
    ),
    "oq_nack": (
        "job_id bigint, lease_token uuid, error text DEFAULT NULL::text,"
        " retry_in interval DEFAULT NULL::interval, retry boolean DEFAULT true,"
        " queue_name text DEFAULT NULL::text",
        "text",
    ),
    "oq_reap": ("", "integer"),
    "oq_cancel": ("job_id bigint", "boolean"),
    "oq_replay": ("job_id bigint", "boolean"),
    "oq_configure_queue": (
        "queue_name text, max_attempts integer DEFAULT NULL::integer, lease_seconds integer DEFAULT"
        " NULL::integer, backoff_base interval DEFAULT NULL::interval, backoff_max interval DEFAULT"
        " NULL::interval",
        "void",
    ),
    "oq_stats": (
        "",
        "TABLE(queue_name text, pending bigint, processing bigint, failed bigint, completed bigint,"
        " dead bigint, cancelled bigint, oldest_due_at timestamp with time zone, paused boolean)",
    ),
    "oq_purge": ("older_than interval, include_dead boolean DEFAULT false", "bigint"),
}


@pytest.mark.parametrize("function", sorted(SIGNATURES))
def test_section3_signature_argument_names_defaults_return_type_and_columns(conn, function):
    rows = conn.execute(
        "select pg_get_function_arguments(p.oid), pg_get_function_result(p.oid)"
        " from pg_proc as p where p.pronamespace = 'openqueue'::regnamespace and p.proname = %s",
        [function],
    ).fetchall()
    assert rows == [SIGNATURES[function]]  # exactly one overload, as documented


# --- section 3: lease order across the due flag --------------------------------------------


def test_lease_order_across_promoted_and_already_due_jobs(conn):
    """Jobs that fell due since the last lease take their exact place among those due before."""
    now = db_now(conn)
    due_old = enqueue(conn, "q", {"n": "due, 1 min ago"}, run_at=now - timedelta(minutes=1))
    due_new = enqueue(conn, "q", {"n": "due, now"}, run_at=now)
    due_high = enqueue(conn, "q", {"n": "due, priority 1"}, priority=1, run_at=now)
    later = soon(conn, 400)
    fell_due = enqueue(conn, "q", {"n": "falls due"}, run_at=later)
    fell_due_high = enqueue(conn, "q", {"n": "falls due, priority 2"}, priority=2, run_at=later)
    fell_due_low = enqueue(conn, "q", {"n": "falls due, priority -1"}, priority=-1, run_at=later)
    wait_past(conn, later)
    # priority desc, then run_at, then id
    assert lease_all(conn) == [fell_due_high, due_high, due_old, due_new, fell_due, fell_due_low]


def test_lease_order_when_a_batch_mixes_promoted_and_due_jobs(conn):
    """Rows come back in lease order from one call, promoted jobs included."""
    now = db_now(conn)
    a = enqueue(conn, "q", run_at=now - timedelta(seconds=5))
    later = soon(conn, 300)
    b = enqueue(conn, "q", priority=3, run_at=later)
    c = enqueue(conn, "q", run_at=later)
    d = enqueue(conn, "q", priority=3, run_at=now)
    wait_past(conn, later)
    assert [r["id"] for r in lease(conn, "q", batch_size=10)] == [d, b, a, c]


def test_lease_order_holds_when_more_jobs_fall_due_than_one_promotion_takes(conn):
    """Highest priority first, even when thousands of lower-priority jobs fell due before it."""
    later = soon(conn, 700)
    enqueue_batch(conn, "q", [{"n": n} for n in range(1200)], run_at=later)
    urgent = enqueue(conn, "q", {"urgent": True}, priority=5, run_at=later + timedelta(milliseconds=50))
    wait_past(conn, later + timedelta(milliseconds=50))
    assert lease_one(conn, "q")["id"] == urgent


def test_failed_job_whose_retry_time_came_is_leased_in_run_at_order(conn):
    """A failed job becomes leasable at its run_at and is ordered by that run_at."""
    first = enqueue(conn, "q", {"n": "fails"})
    held = lease_one(conn, "q")
    assert held["id"] == first
    assert nack(conn, first, held["lease_token"], error="e", retry_in=timedelta(milliseconds=300)) == "failed"
    retry_at = job(conn, first)["run_at"]
    assert lease(conn, "q") == []  # backing off
    wait_past(conn, retry_at)
    second = enqueue(conn, "q", {"n": "pending, due after the retry time"})
    assert lease_all(conn) == [first, second]


def test_failed_job_whose_retry_time_came_is_behind_an_older_due_job(conn):
    older = enqueue(conn, "q", run_at=db_now(conn) - timedelta(minutes=5))
    fails = enqueue(conn, "q", priority=1)
    held = lease_one(conn, "q")
    assert held["id"] == fails
    conn.execute("update openqueue.jobs set priority = 0 where id = %s", [fails])
    assert nack(conn, fails, held["lease_token"], retry_in=timedelta(milliseconds=200)) == "failed"
    wait_past(conn, job(conn, fails)["run_at"])
    assert lease_all(conn) == [older, fails]


@pytest.mark.parametrize("relation", ["openqueue.jobs", "openqueue.live_jobs"])
def test_run_at_moved_either_way_through_an_update_keeps_lease_order(conn, relation):
    """Into the past: leasable at once, in its new run_at's place; into the future: not leasable."""
    now = db_now(conn)
    a = enqueue(conn, "q", run_at=now - timedelta(seconds=10))
    b = enqueue(conn, "q", run_at=now + timedelta(hours=1))
    c = enqueue(conn, "q", run_at=now - timedelta(seconds=5))
    # b: future -> before a; c: due -> future
    conn.execute(f"update {relation} set run_at = now() - interval '1 minute' where id = %s", [b])
    conn.execute(f"update {relation} set run_at = now() + interval '1 hour' where id = %s", [c])
    assert lease_all(conn) == [b, a]
    assert job(conn, c)["status"] == "pending"
    # and back: c into the past, then (after a lease) priority raised through the view
    conn.execute(f"update {relation} set run_at = now() - interval '1 second' where id = %s", [c])
    assert lease_all(conn) == [c]


def test_run_at_moved_to_a_moment_that_comes_soon_is_leased_when_it_comes(conn):
    a = enqueue(conn, "q", run_at=db_now(conn) - timedelta(minutes=1))
    later = soon(conn, 300)
    conn.execute("update openqueue.jobs set run_at = %s where id = %s", [later, a])
    assert lease(conn, "q") == []
    wait_past(conn, later)
    assert lease_one(conn, "q")["id"] == a


def test_a_reclaimed_job_keeps_its_run_at_place_in_lease_order(conn):
    now = db_now(conn)
    old = enqueue(conn, "q", run_at=now - timedelta(minutes=10))
    newer = enqueue(conn, "q", run_at=now - timedelta(minutes=1))
    held = lease_one(conn, "q")
    assert held["id"] == old
    expire_lease(conn, old)
    assert reap(conn) == 1
    assert lease_all(conn) == [old, newer]


# --- section 3: oldest_due_at and oq_next_run_at with the due flag ------------------------


def test_oldest_due_at_counts_jobs_due_by_time_but_not_yet_promoted(conn):
    later = soon(conn, 300)
    enqueue(conn, "q", run_at=later)
    assert stats(conn)["q"]["oldest_due_at"] is None
    wait_past(conn, later)
    assert stats(conn)["q"]["oldest_due_at"] == later  # no lease has promoted it yet


def test_oldest_due_at_is_the_earliest_due_run_at_across_promoted_failed_and_waiting_jobs(conn):
    now = db_now(conn)
    oldest = enqueue(conn, "q", run_at=now - timedelta(minutes=1))
    enqueue(conn, "q", run_at=now + timedelta(hours=1))  # not due: ignored
    fails = enqueue(conn, "q", priority=9, run_at=now - timedelta(seconds=5))
    held = lease_one(conn, "q")
    assert held["id"] == fails
    expire_lease(conn, fails)  # processing jobs are not waiting: ignored until reclaimed
    assert stats(conn)["q"]["oldest_due_at"] == now - timedelta(minutes=1)
    conn.execute("update openqueue.jobs set run_at = now() - interval '1 hour' where id = %s", [fails])
    assert stats(conn)["q"]["oldest_due_at"] == now - timedelta(minutes=1)
    assert nack(conn, fails, held["lease_token"], retry_in=timedelta(0)) == "failed"
    row = stats(conn)["q"]
    assert (row["failed"], row["oldest_due_at"]) == (1, now - timedelta(minutes=1))
    assert cancel(conn, oldest) is True
    assert stats(conn)["q"]["oldest_due_at"] == job(conn, fails)["run_at"]  # the failed job, due again


def test_next_run_at_follows_jobs_moved_and_falling_due(conn):
    def next_run_at() -> datetime | None:
        return conn.execute("select openqueue.oq_next_run_at(array['q'])").fetchone()[0]

    now = db_now(conn)
    a = enqueue(conn, "q", run_at=now + timedelta(hours=2))
    assert next_run_at() == now + timedelta(hours=2)
    conn.execute("update openqueue.jobs set run_at = %s where id = %s", [now + timedelta(hours=1), a])
    assert next_run_at() == now + timedelta(hours=1)
    make_due(conn, a)
    assert next_run_at() is None  # due: nothing waits in the future
    conn.execute("update openqueue.jobs set run_at = now() + interval '3 hours' where id = %s", [a])
    assert next_run_at() is not None


# --- section 3: oq_stats counts after every path -------------------------------------------

TRUTH = """
    select queue_name,
           count(*) filter (where status = 'pending'),
           count(*) filter (where status = 'processing'),
           count(*) filter (where status = 'failed'),
           count(*) filter (where status = 'completed'),
           count(*) filter (where status = 'dead'),
           count(*) filter (where status = 'cancelled')
    from openqueue.jobs group by queue_name
"""

COUNTS = ("pending", "processing", "failed", "completed", "dead", "cancelled")


def assert_stats_exact(conn: psycopg.Connection, configured: set[str] = frozenset()) -> None:
    """oq_stats: one row per queue with jobs or settings, with exactly the counts of openqueue.jobs."""
    truth = {r[0]: tuple(r[1:]) for r in conn.execute(TRUTH).fetchall()}
    for name in configured:
        truth.setdefault(name, (0,) * 6)
    got = {name: tuple(row[c] for c in COUNTS) for name, row in stats(conn).items()}
    assert got == truth


def test_stats_exact_after_ack_many_with_duplicates_and_stale_tokens(conn):
    ids = enqueue_batch(conn, "q", [{"n": n} for n in range(5)])
    held = {r["id"]: r["lease_token"] for r in lease(conn, "q", batch_size=5)}
    job_ids = [ids[0], ids[0], ids[1], ids[2], ids[3], 999_999]
    tokens = [held[ids[0]], held[ids[0]], held[ids[1]], uuid.uuid4(), held[ids[3]], uuid.uuid4()]
    assert sorted(ack_many(conn, job_ids, tokens)) == sorted([ids[0], ids[1], ids[3]])
    assert_stats_exact(conn)
    assert stats(conn)["q"]["completed"] == 3
    # the same batch again: every token is stale now
    assert ack_many(conn, job_ids, tokens) == []
    assert_stats_exact(conn)
    assert stats(conn)["q"]["completed"] == 3


@pytest.mark.parametrize("state", ["pending", "failed", "processing"])
def test_stats_exact_after_cancel_of_each_state(conn, state):
    job_id, _ = make_job(conn, state)
    assert_stats_exact(conn)
    assert cancel(conn, job_id) is True
    assert_stats_exact(conn)
    assert stats(conn)["q"]["cancelled"] == 1
    assert cancel(conn, job_id) is False
    assert_stats_exact(conn)


def test_stats_exact_after_nack_to_dead_reap_to_dead_and_replay(conn):
    configure(conn, "q", max_attempts=1)
    a, token_a = make_job(conn, "processing")
    b = enqueue(conn, "q")
    held_b = lease_one(conn, "q")
    assert nack(conn, a, token_a, error="x") == "dead"
    expire_lease(conn, b)
    assert reap(conn) == 1
    assert job(conn, b)["status"] == "dead"
    assert_stats_exact(conn, {"q"})
    assert stats(conn)["q"]["dead"] == 2
    assert replay(conn, a) is True
    assert_stats_exact(conn, {"q"})
    assert ack(conn, b, held_b["lease_token"]) is False
    assert_stats_exact(conn, {"q"})


def test_stats_exact_after_purge_purge_batch_view_delete_and_truncate(conn):
    for queue_name in ("p1", "p2", "p3"):
        for state in ("completed", "dead", "cancelled"):
            make_job(conn, state, queue_name)
    conn.execute("update openqueue.jobs set finished_at = now() - interval '1 day'")
    assert scalar(conn, "oq_purge_batch", older_than=timedelta(hours=1), max_rows=1) == 1
    assert_stats_exact(conn)
    assert purge(conn, timedelta(hours=1)) == 5  # completed and cancelled of all three
    assert_stats_exact(conn)
    conn.execute("delete from openqueue.jobs where queue_name = 'p1'")
    assert_stats_exact(conn)
    with conn.transaction():
        conn.execute("truncate openqueue.finished_jobs")
        assert_stats_exact(conn)
        raise psycopg.Rollback()
    assert_stats_exact(conn)  # a rolled-back TRUNCATE restores the counts too
    assert set(stats(conn)) == {"p2", "p3"}
    conn.execute("truncate openqueue.finished_jobs")
    assert_stats_exact(conn)
    assert stats(conn) == {}


def test_stats_lists_queues_with_only_settings(conn):
    configure(conn, "configured", lease_seconds=9)
    conn.execute("select openqueue.oq_set_queue_notify('quiet', 'when_waiting')")
    conn.execute("select openqueue.oq_set_queue_max_payload('small', 10)")
    got = stats(conn)
    assert set(got) == {"configured", "quiet", "small"}
    for row in got.values():
        assert tuple(row[c] for c in COUNTS) == (0,) * 6
        assert row["oldest_due_at"] is None


@pytest.mark.parametrize("how", ["purge", "purge_batch", "view_delete", "replay_then_view_delete"])
def test_stats_drops_a_queue_with_no_jobs_and_no_settings(conn, how):
    """Counter rows summing to zero do not make a queue appear."""
    for state in ("completed", "dead", "cancelled"):
        make_job(conn, state, "gone")
    configure(conn, "kept", max_attempts=2)
    make_job(conn, "completed", "kept")
    conn.execute("update openqueue.jobs set finished_at = now() - interval '1 day'")
    if how == "purge":
        assert purge(conn, timedelta(0), include_dead=True) == 4
    elif how == "purge_batch":
        assert scalar(conn, "oq_purge_batch", older_than=timedelta(0), include_dead=True, max_rows=2) == 2
        assert scalar(conn, "oq_purge_batch", older_than=timedelta(0), include_dead=True, max_rows=2) == 2
    elif how == "view_delete":
        conn.execute("delete from openqueue.jobs")
    else:
        dead = conn.execute("select id from openqueue.jobs where queue_name = 'gone' and status = 'dead'")
        assert replay(conn, dead.fetchone()[0]) is True
        conn.execute("delete from openqueue.jobs")
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0
    assert conn.execute(
        "select count(*) from openqueue.finished_counts where queue_name = 'gone'"
    ).fetchone()[0]
    got = stats(conn)
    assert "gone" not in got
    assert tuple(got["kept"][c] for c in COUNTS) == (0,) * 6  # settings keep it listed


# --- section 3: idempotency keys --------------------------------------------------------------


@pytest.mark.parametrize("how", ["purge", "purge_batch", "view_delete"])
def test_idempotency_key_is_free_again_once_its_job_is_purged_and_reusable(conn, how):
    first = enqueue(conn, "q", {"v": 1}, idempotency_key="k")
    held = lease_one(conn, "q")
    assert ack(conn, first, held["lease_token"]) is True
    assert enqueue(conn, "q", {"v": 2}, idempotency_key="k") == first
    if how == "purge":
        assert purge(conn, timedelta(0)) == 1
    elif how == "purge_batch":
        assert scalar(conn, "oq_purge_batch", older_than=timedelta(0)) == 1
    else:
        conn.execute("delete from openqueue.jobs where id = %s", [first])
    second = enqueue(conn, "q", {"v": 3}, idempotency_key="k")
    assert second is not None and second != first
    assert job(conn, second)["payload"] == {"v": 3}
    assert enqueue(conn, "q", {"v": 4}, idempotency_key="k") == second


def test_enqueue_never_returns_null_when_a_concurrent_purge_frees_the_key(dsn):
    """Keys freed by a concurrent purge while enqueues reuse them: an id every time, never NULL.

    A smoke test: the narrow window (a purge committing between oq_enqueue's insert attempt
    and its lookup) cannot be forced from outside the function, and 900 rounds of this did
    not hit it against version 2's oq_enqueue. The retry loop of version 3 closes it.
    """
    rounds = 60
    results: list[int | None] = []
    with psycopg.connect(dsn, autocommit=True) as setup:
        for n in range(rounds):
            job_id = enqueue(setup, "q", {"n": n}, idempotency_key=f"k{n}")
            ack(setup, job_id, lease_one(setup, "q")["lease_token"])
    start = threading.Barrier(2)

    def purger() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            start.wait()
            for n in range(rounds):
                c.execute(
                    "delete from openqueue.jobs where idempotency_key = %s and queue_name = 'q'", [f"k{n}"]
                )

    def producer() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            start.wait()
            for n in range(rounds):
                results.append(enqueue(c, "q", {"again": n}, idempotency_key=f"k{n}"))

    threads = [helpers.Background(purger), helpers.Background(producer)]
    for t in threads:
        t.start()
    for t in threads:
        t.result(60)
    assert len(results) == rounds
    assert None not in results


# --- section 3: leases -------------------------------------------------------------------------


def test_expired_but_unreaped_lease_still_acks_heartbeats_acks_many_and_nacks(conn):
    ids = enqueue_batch(conn, "q", [{}, {}, {}, {}])
    held = {r["id"]: r["lease_token"] for r in lease(conn, "q", batch_size=4)}
    for i in ids:
        expire_lease(conn, i)
    assert heartbeat(conn, ids[0], held[ids[0]]) is not None
    assert ack(conn, ids[1], held[ids[1]]) is True
    assert ack_many(conn, [ids[2]], [held[ids[2]]]) == [ids[2]]
    assert nack(conn, ids[3], held[ids[3]], error="e") == "failed"
    assert [job(conn, i)["status"] for i in ids] == ["processing", "completed", "completed", "failed"]


def test_an_expired_but_unreaped_lease_is_not_leased_by_anyone_else(conn):
    """oq_lease claims only pending / failed jobs: until oq_reap, nobody else holds the job."""
    job_id, token = make_job(conn, "processing")
    expire_lease(conn, job_id)
    assert lease(conn, "q", "w2", batch_size=10) == []
    assert ack(conn, job_id, token) is True


@pytest.mark.parametrize("call", ["ack", "ack_many", "heartbeat", "nack"])
def test_cancel_revokes_a_held_lease_for_every_lease_call(conn, call):
    job_id, token = make_job(conn, "processing")
    assert cancel(conn, job_id) is True
    before = job(conn, job_id)
    if call == "ack":
        assert ack(conn, job_id, token) is False
    elif call == "ack_many":
        assert ack_many(conn, [job_id], [token]) == []
    elif call == "heartbeat":
        assert heartbeat(conn, job_id, token) is None
    else:
        assert nack(conn, job_id, token, error="late") is None
    assert job(conn, job_id) == before
    assert stats(conn)["q"]["cancelled"] == 1
    assert stats(conn)["q"]["completed"] == 0


def test_cancelled_then_replayed_job_refuses_the_old_token(conn):
    job_id, token = make_job(conn, "processing")
    assert cancel(conn, job_id) is True
    assert replay(conn, job_id) is True
    assert ack_many(conn, [job_id], [token]) == []
    assert heartbeat(conn, job_id, token) is None
    assert job(conn, job_id)["status"] == "pending"


# --- sections 3 and 4: batches and limits ------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "accepted"),
    [
        ("select * from openqueue.oq_lease('q', 'w', lease_seconds => 86400)", True),
        ("select * from openqueue.oq_lease('q', 'w', lease_seconds => 86401)", False),
        ("select * from openqueue.oq_lease('q', 'w', batch_size => 10000)", True),
        ("select * from openqueue.oq_lease('q', 'w', batch_size => 10001)", False),
        ("select * from openqueue.oq_lease('q', 'w', lease_seconds => 1, batch_size => 1)", True),
        ("select * from openqueue.oq_lease('q', 'w', lease_seconds => 0)", False),
        ("select * from openqueue.oq_lease('q', 'w', batch_size => 0)", False),
        ("select openqueue.oq_configure_queue('q', lease_seconds => 86400)", True),
        ("select openqueue.oq_configure_queue('q', lease_seconds => 86401)", False),
        ("select openqueue.oq_configure_queue('q', max_attempts => 1)", True),
        ("select openqueue.oq_configure_queue('q', max_attempts => 0)", False),
        ("select * from openqueue.oq_enqueue_batch('q', '[{}]', max_attempts => 1)", True),
        ("select * from openqueue.oq_enqueue_batch('q', '[{}]', max_attempts => 0)", False),
        ("select openqueue.oq_enqueue('q', '{}', max_attempts => 1)", True),
        ("select openqueue.oq_enqueue('q', '{}', max_attempts => 0)", False),
    ],
)
def test_limits_are_inclusive_wherever_the_argument_appears(conn, sql, accepted):
    if accepted:
        conn.execute(sql)
    else:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(sql)


@pytest.mark.parametrize(("seconds", "accepted"), [(86400, True), (86401, False), (1, True), (0, False)])
def test_heartbeat_lease_seconds_limits_are_inclusive_on_a_held_lease(conn, seconds, accepted):
    job_id, token = make_job(conn, "processing")
    if accepted:
        with conn.transaction():
            now = db_now(conn)
            assert heartbeat(conn, job_id, token, lease_seconds=seconds) == now + timedelta(seconds=seconds)
    else:
        before = job(conn, job_id)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="lease_seconds"):
            heartbeat(conn, job_id, token, lease_seconds=seconds)
        assert job(conn, job_id) == before


def test_lease_of_10000_jobs_in_one_call_takes_them_all_in_lease_order(conn):
    ids = enqueue_batch(conn, "q", [{"n": n} for n in range(10000)])
    rows = lease(conn, "q", batch_size=10000)
    assert [r["id"] for r in rows] == ids
    assert stats(conn)["q"]["processing"] == 10000


def test_enqueue_batch_with_an_empty_array_writes_nothing_and_draws_no_id(conn):
    assert enqueue_batch(conn, "q", []) == []
    assert stats(conn) == {}
    assert conn.execute("select count(*) from openqueue.live_jobs").fetchone()[0] == 0
    assert enqueue(conn, "q") == 1  # no id drawn by the empty batch


# --- section 3: backoff -------------------------------------------------------------------------


def test_backoff_is_never_less_than_the_unjittered_delay_and_at_most_ten_percent_more(conn):
    configure(conn, "q", backoff_base=timedelta(seconds=10), backoff_max=timedelta(seconds=25))
    rows = conn.execute(
        "select n, extract(epoch from openqueue._backoff(n, interval '10 seconds', interval '25 seconds'))"
        " from generate_series(1, 4) as n, generate_series(1, 200)"
    ).fetchall()
    expected = {1: 10.0, 2: 20.0, 3: 25.0, 4: 25.0}
    for n, seconds in rows:
        assert expected[n] <= float(seconds) <= expected[n] * 1.1 + 1e-6
    spread = {n: {float(s) for m, s in rows if m == n} for n in expected}
    assert all(len(values) > 1 for values in spread.values())  # jittered, not constant


# --- section 3: notifications with the new functions ----------------------------------------------


@pytest.fixture
def listener(dsn):
    """LISTEN openqueue on the server, and on Citus on every node (contract section 10)."""
    node_listener = helpers.NodeListener(dsn, "openqueue")
    try:
        yield node_listener
    finally:
        node_listener.close()


def received(listener, conn) -> list[str]:
    """Payloads so far, up to a fresh sentinel on each node."""
    return [payload for _, payload in listener.received()]


def test_one_notification_per_enqueue_batch_call(conn, listener):
    enqueue_batch(conn, "q", [{}, {}, {}])
    enqueue_batch(conn, "q", [{}, {}])
    assert received(listener, conn) == ["q", "q"]


def test_no_notification_from_replay_or_reap_before_commit(conn, dsn, listener):
    dead, _ = make_job(conn, "dead", "r")
    enqueue(conn, "s")
    lease_one(conn, "s")
    conn.execute(
        "update openqueue.jobs set lease_expires_at = now() - interval '1 minute' where queue_name = 's'"
    )
    # sorted: on Citus "r" and "s" may be held, and notified, by different nodes (section 10)
    assert sorted(received(listener, conn)) == ["r", "s"]  # the enqueues
    with psycopg.connect(dsn) as other:
        assert replay(other, dead) is True
        assert reap(other) == 1
        assert received(listener, conn) == []
        other.commit()
    assert sorted(received(listener, conn)) == ["r", "s"]


# --- the finished-job counters and concurrency ------------------------------------------------


def _sessions_sharing_a_counter_shard(dsn: str) -> list[psycopg.Connection]:
    """Two sessions (open transactions) whose counters would share a row if sharded by pid % 16."""
    opened: dict[int, psycopg.Connection] = {}
    while True:
        s = psycopg.connect(dsn)
        shard = s.info.backend_pid % 16
        if shard in opened:
            for other_shard, other in opened.items():
                if other_shard != shard:
                    other.close()
            return [opened[shard], s]
        opened[shard] = s


def test_two_transactions_finishing_jobs_of_two_queues_in_opposite_orders_neither_wait_nor_deadlock(
    conn, dsn
):
    """As in version 1: finishing different jobs never makes one session wait for another."""
    a = enqueue_batch(conn, "a", [{}, {}])
    b = enqueue_batch(conn, "b", [{}, {}])
    held = {r["id"]: r["lease_token"] for q in ("a", "b") for r in lease(conn, q, batch_size=2)}
    s1, s2 = _sessions_sharing_a_counter_shard(dsn)
    try:
        for s in (s1, s2):
            s.execute("set lock_timeout = '3s'")
        assert ack(s1, a[0], held[a[0]]) is True
        assert cancel(s2, b[0]) is True
        assert ack(s1, b[1], held[b[1]]) is True  # would wait for s2 on a shared counter row
        assert ack_many(s2, [a[1]], [held[a[1]]]) == [a[1]]
        s1.commit()
        s2.commit()
    finally:
        s1.close()
        s2.close()
    assert_stats_exact(conn)


def test_counters_of_exited_sessions_are_folded_by_reap_and_stats_stay_exact(conn, dsn):
    ids = enqueue_batch(conn, "q", [{} for _ in range(6)])
    held = lease(conn, "q", batch_size=6)
    pids = set()
    for row in held[:5]:
        with psycopg.connect(dsn, autocommit=True) as s:
            pids.add(s.info.backend_pid)
            assert ack(s, row["id"], row["lease_token"]) is True
    assert cancel(conn, ids[5]) is True  # this session stays: its row is kept
    rows_before = conn.execute("select count(*) from openqueue.finished_counts").fetchone()[0]
    assert rows_before >= 3
    deadline = time.monotonic() + 10  # a closed session leaves pg_stat_activity shortly after
    while conn.execute("select count(*) from pg_stat_activity where pid = any(%s)", [list(pids)]).fetchone()[
        0
    ]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert reap(conn) == 0
    shards = conn.execute(
        "select status, shard from openqueue.finished_counts where queue_name = 'q' order by 1, 2"
    ).fetchall()
    assert shards == [("cancelled", conn.info.backend_pid), ("completed", 0)]
    assert_stats_exact(conn)
    assert (stats(conn)["q"]["completed"], stats(conn)["q"]["cancelled"]) == (5, 1)


def test_stats_stay_exact_while_sessions_come_and_go_and_reaps_fold_their_counters(conn, dsn):
    """Acks, cancels and nacks from short-lived sessions, folded concurrently by repeated reaps."""
    configure(conn, "q", max_attempts=1)
    ids = enqueue_batch(conn, "q", [{"n": n} for n in range(240)])
    held = lease(conn, "q", batch_size=240)
    chunks = [held[i::4] for i in range(4)]
    stop = threading.Event()

    def finisher(rows: list[dict]) -> int:
        done = 0
        for start in range(0, len(rows), 10):
            with psycopg.connect(dsn, autocommit=True) as s:  # a new backend (pid) every 10 jobs
                for n, row in enumerate(rows[start : start + 10]):
                    if n % 3 == 0:
                        done += ack(s, row["id"], row["lease_token"])
                    elif n % 3 == 1:
                        done += cancel(s, row["id"])
                    else:
                        done += nack(s, row["id"], row["lease_token"], error="x") == "dead"
        return done

    def reaper() -> int:
        with psycopg.connect(dsn, autocommit=True) as s:
            while not stop.is_set():
                reap(s)
        return 0

    reapers = [helpers.Background(reaper) for _ in range(2)]
    workers = [helpers.Background(lambda rows=rows: finisher(rows)) for rows in chunks]
    for t in reapers + workers:
        t.start()
    assert sum(t.result(120) for t in workers) == len(ids)
    stop.set()
    for t in reapers:
        t.result(30)
    assert_stats_exact(conn, {"q"})
    assert reap(conn) == 0
    assert_stats_exact(conn, {"q"})
    row = stats(conn)["q"]
    assert (row["completed"], row["cancelled"], row["dead"]) == (96, 72, 72)  # 4, 3 and 3 of every 10


# --- section 3: oq_purge's "finished before now() - older_than" ---------------------------------


@pytest.mark.parametrize("function", ["oq_purge", "oq_purge_batch"])
def test_purge_deletes_only_jobs_finished_strictly_before_now_minus_older_than(conn, function):
    ids = {state: make_job(conn, state)[0] for state in ("completed", "cancelled", "dead")}
    extra = make_job(conn, "completed", "other")[0]
    with conn.transaction():
        conn.execute("update openqueue.jobs set finished_at = now() - interval '1 hour'")
        conn.execute(
            "update openqueue.jobs set finished_at = now() - interval '1 hour 1 microsecond' where id = %s",
            [extra],
        )
        # finished exactly at now() - older_than: not before it, kept
        assert scalar(conn, function, older_than=timedelta(hours=1), include_dead=True) == 1
        assert scalar(conn, function, older_than=timedelta(minutes=59), include_dead=False) == 2
    left = conn.execute("select id, status from openqueue.jobs order by id").fetchall()
    assert left == [(ids["dead"], "dead")]
    assert_stats_exact(conn)
