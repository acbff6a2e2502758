"""oq_configure_queue, oq_stats and oq_purge (CONTRACT.md section 3)."""

from __future__ import annotations

from datetime import timedelta

from . import helpers
from .helpers import (
    ack,
    age_finished,
    configure,
    db_now,
    enqueue,
    heartbeat,
    job,
    job_count,
    lease_one,
    make_job,
    nack,
    purge,
    stats,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn

STATS_COLUMNS = [
    "queue_name",
    "pending",
    "processing",
    "failed",
    "completed",
    "dead",
    "cancelled",
    "oldest_due_at",
    "paused",
]


def _nack_delay(conn, queue_name: str) -> timedelta:
    """Lease a fresh job of queue_name and nack it: the backoff chosen for attempt 1."""
    job_id = enqueue(conn, queue_name, priority=100)  # leased before anything else waiting
    held = lease_one(conn, queue_name)
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, job_id, held["lease_token"]) == "failed"
    return job(conn, job_id)["run_at"] - now


def _lease_length(conn, queue_name: str) -> timedelta:
    enqueue(conn, queue_name, priority=100)
    with conn.transaction():
        now = db_now(conn)
        return lease_one(conn, queue_name)["lease_expires_at"] - now


# --- oq_configure_queue ----------------------------------------------------------------


def test_configure_queue_returns_void(conn):
    returned = conn.execute(
        "select pg_typeof(openqueue.oq_configure_queue(queue_name => 'q', max_attempts => 3))::text"
    ).fetchall()
    assert returned == [("void",)]


def test_configured_settings_take_effect(conn):
    configure(
        conn,
        "tuned",
        max_attempts=7,
        lease_seconds=45,
        backoff_base=timedelta(seconds=30),
        backoff_max=timedelta(minutes=10),
    )
    assert job(conn, enqueue(conn, "tuned"))["max_attempts"] == 7
    assert _lease_length(conn, "tuned") == timedelta(seconds=45)
    assert timedelta(seconds=30) <= _nack_delay(conn, "tuned") <= timedelta(seconds=33)
    # other queues keep the built-in defaults
    assert job(conn, enqueue(conn, "plain"))["max_attempts"] == 5
    assert _lease_length(conn, "plain") == timedelta(seconds=30)
    assert timedelta(seconds=1) <= _nack_delay(conn, "plain") <= timedelta(seconds=1.1)


def test_backoff_max_caps_the_first_delay_too(conn):
    configure(conn, "capped", backoff_base=timedelta(minutes=5), backoff_max=timedelta(seconds=2))
    assert timedelta(seconds=2) <= _nack_delay(conn, "capped") <= timedelta(seconds=2.2)


def test_null_leaves_a_setting_unchanged(conn):
    configure(
        conn,
        "tuned",
        max_attempts=7,
        lease_seconds=45,
        backoff_base=timedelta(seconds=30),
        backoff_max=timedelta(minutes=10),
    )
    configure(conn, "tuned", lease_seconds=50)  # the others omitted
    configure(conn, "tuned", max_attempts=None, lease_seconds=None, backoff_base=None, backoff_max=None)
    assert job(conn, enqueue(conn, "tuned"))["max_attempts"] == 7
    assert _lease_length(conn, "tuned") == timedelta(seconds=50)
    assert timedelta(seconds=30) <= _nack_delay(conn, "tuned") <= timedelta(seconds=33)


def test_a_later_configure_overrides_an_earlier_one(conn):
    configure(conn, "q", max_attempts=7, lease_seconds=45)
    configure(conn, "q", max_attempts=2)
    assert job(conn, enqueue(conn, "q"))["max_attempts"] == 2
    assert _lease_length(conn, "q") == timedelta(seconds=45)


def test_queue_lease_seconds_applies_to_heartbeats(conn):
    configure(conn, "q", lease_seconds=300)
    job_id = enqueue(conn, "q")
    held = lease_one(conn, "q", lease_seconds=1)
    with conn.transaction():
        now = db_now(conn)
        assert heartbeat(conn, job_id, held["lease_token"]) == now + timedelta(seconds=300)


# --- oq_stats --------------------------------------------------------------------------


def test_stats_is_empty_for_a_fresh_install(conn):
    cur = conn.execute("select * from openqueue.oq_stats()")
    assert [c.name for c in cur.description] == STATS_COLUMNS
    assert cur.fetchall() == []


def test_stats_counts_every_state_per_queue(conn):
    for state, n in (
        ("processing", 1),
        ("failed", 2),
        ("completed", 3),
        ("dead", 1),
        ("cancelled", 2),
        ("pending", 4),
    ):
        for _ in range(n):
            if state == "pending":
                enqueue(conn, "a")
            else:
                make_job(conn, state, "a")
    make_job(conn, "completed", "b")
    configure(conn, "c", max_attempts=3)  # settings only, no jobs

    got = stats(conn)
    assert set(got) == {"a", "b", "c"}
    counts = {
        q: tuple(row[k] for k in ("pending", "processing", "failed", "completed", "dead", "cancelled"))
        for q, row in got.items()
    }
    assert counts == {"a": (4, 1, 2, 3, 1, 2), "b": (0, 0, 0, 1, 0, 0), "c": (0, 0, 0, 0, 0, 0)}
    assert got["b"]["oldest_due_at"] is None
    assert got["c"]["oldest_due_at"] is None


def test_stats_oldest_due_at_is_the_earliest_due_run_at_of_waiting_jobs(conn):
    now = db_now(conn)
    # not counted: a running job and a finished job with older run_at, and a job not due yet
    running = enqueue(conn, "q", run_at=now - timedelta(hours=5), priority=10)
    assert lease_one(conn, "q")["id"] == running
    done = enqueue(conn, "q", run_at=now - timedelta(hours=4), priority=10)
    assert ack(conn, done, lease_one(conn, "q")["lease_token"]) is True
    enqueue(conn, "q", run_at=now + timedelta(hours=1))
    # counted: pending and failed jobs already due
    enqueue(conn, "q", run_at=now - timedelta(minutes=10))
    failed = enqueue(conn, "q", run_at=now - timedelta(hours=1), priority=5)
    assert nack(conn, failed, lease_one(conn, "q")["lease_token"], retry_in=timedelta(0)) == "failed"
    conn.execute("update openqueue.jobs set run_at = %s where id = %s", [now - timedelta(minutes=30), failed])

    assert stats(conn)["q"]["oldest_due_at"] == now - timedelta(minutes=30)


def test_stats_oldest_due_at_is_null_when_nothing_is_due(conn):
    now = db_now(conn)
    enqueue(conn, "q", run_at=now + timedelta(minutes=1))
    make_job(conn, "failed", "q")  # waits an hour
    row = stats(conn)["q"]
    assert (row["pending"], row["failed"], row["oldest_due_at"]) == (1, 1, None)


# --- oq_purge --------------------------------------------------------------------------


def test_purge_deletes_old_completed_and_cancelled_jobs_only(conn):
    old = {state: make_job(conn, state)[0] for state in ("completed", "cancelled", "dead")}
    young = {state: make_job(conn, state)[0] for state in ("completed", "cancelled", "dead")}
    live = {state: make_job(conn, state)[0] for state in ("processing", "failed", "pending")}
    for job_id in old.values():
        age_finished(conn, job_id, "2 days")
    for job_id in young.values():
        age_finished(conn, job_id, "1 hour")

    assert purge(conn, timedelta(days=1)) == 2
    remaining = {r[0] for r in conn.execute("select id from openqueue.jobs")}
    assert remaining == {old["dead"], *young.values(), *live.values()}


def test_purge_with_include_dead_deletes_old_dead_jobs_too(conn):
    old = {state: make_job(conn, state)[0] for state in ("completed", "cancelled", "dead")}
    young_dead, _ = make_job(conn, "dead")
    for job_id in old.values():
        age_finished(conn, job_id, "2 days")
    age_finished(conn, young_dead, "1 hour")

    assert purge(conn, timedelta(days=1), include_dead=True) == 3
    assert {r[0] for r in conn.execute("select id from openqueue.jobs")} == {young_dead}


def test_purge_with_include_dead_false_keeps_dead_jobs(conn):
    dead, _ = make_job(conn, "dead")
    age_finished(conn, dead, "2 days")
    assert purge(conn, timedelta(days=1), include_dead=False) == 0
    assert job(conn, dead)["status"] == "dead"


def test_purge_returns_zero_when_nothing_is_old_enough(conn):
    make_job(conn, "completed")
    assert purge(conn, timedelta(minutes=5)) == 0
    assert job_count(conn) == 1


def test_purge_zero_interval_deletes_everything_already_finished(conn):
    done, _ = make_job(conn, "completed")
    age_finished(conn, done, "1 second")
    assert purge(conn, timedelta(0)) == 1
    assert job_count(conn) == 0


def test_purged_jobs_leave_stats(conn):
    done, _ = make_job(conn, "completed")
    age_finished(conn, done, "2 days")
    assert purge(conn, timedelta(days=1)) == 1
    assert stats(conn) == {}
