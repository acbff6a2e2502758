"""oq_enqueue and oq_enqueue_batch (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from psycopg.types.json import Jsonb

from . import helpers
from .helpers import (
    DOCUMENTED_JOB_COLUMNS,
    Background,
    ack,
    age_finished,
    configure,
    db_now,
    enqueue,
    enqueue_batch,
    job,
    job_count,
    lease_one,
    purge,
    wait_until_blocked,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn

# --- oq_enqueue ------------------------------------------------------------------------


def test_enqueue_returns_the_id_of_a_pending_row_with_every_documented_column(conn):
    with conn.transaction():
        now = db_now(conn)
        job_id = enqueue(conn, "emails", {"to": "a@example.com"})
    assert isinstance(job_id, int)

    cur = conn.execute("select * from openqueue.jobs where id = %s", [job_id])
    columns = [c.name for c in cur.description]
    assert set(DOCUMENTED_JOB_COLUMNS) <= set(columns)
    row = dict(zip(columns, cur.fetchone(), strict=True))
    expected = {
        "id": job_id,
        "queue_name": "emails",
        "payload": {"to": "a@example.com"},
        "status": "pending",
        "priority": 0,
        "run_at": now,
        "attempts": 0,
        "max_attempts": 5,
        "leased_by": None,
        "lease_expires_at": None,
        "result": None,
        "errors": [],
        "idempotency_key": None,
        "created_at": now,
        "finished_at": None,
    }
    assert {k: row[k] for k in DOCUMENTED_JOB_COLUMNS} == expected


def test_enqueue_stores_priority_run_at_max_attempts_and_idempotency_key(conn):
    run_at = db_now(conn) + timedelta(hours=2)
    job_id = enqueue(conn, "q", [1, "two"], priority=-7, run_at=run_at, max_attempts=3, idempotency_key="k")
    row = job(conn, job_id)
    assert (row["payload"], row["priority"], row["run_at"], row["max_attempts"], row["idempotency_key"]) == (
        [1, "two"],
        -7,
        run_at,
        3,
        "k",
    )
    assert row["status"] == "pending"


def test_enqueue_accepts_positional_arguments(conn):
    job_id = conn.execute(
        "select openqueue.oq_enqueue('q', '{\"a\": 1}'::jsonb, 4, now(), 2, 'key')"
    ).fetchone()[0]
    row = job(conn, job_id)
    assert (row["payload"], row["priority"], row["max_attempts"], row["idempotency_key"]) == (
        {"a": 1},
        4,
        2,
        "key",
    )


def test_enqueue_ids_are_distinct_and_increasing(conn):
    ids = [enqueue(conn, "q") for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_null_max_attempts_takes_the_builtin_default_of_5(conn):
    omitted = enqueue(conn, "q")
    explicit_null = enqueue(conn, "q", max_attempts=None)
    assert job(conn, omitted)["max_attempts"] == 5
    assert job(conn, explicit_null)["max_attempts"] == 5


def test_null_max_attempts_takes_the_configured_queue_default(conn):
    configure(conn, "configured", max_attempts=9)
    assert job(conn, enqueue(conn, "configured"))["max_attempts"] == 9
    assert job(conn, enqueue(conn, "configured", max_attempts=None))["max_attempts"] == 9
    # an explicit value beats the queue setting; other queues keep the built-in default
    assert job(conn, enqueue(conn, "configured", max_attempts=2))["max_attempts"] == 2
    assert job(conn, enqueue(conn, "other"))["max_attempts"] == 5


def test_max_attempts_is_fixed_at_enqueue_time(conn):
    job_id = enqueue(conn, "q")
    configure(conn, "q", max_attempts=8)
    assert job(conn, job_id)["max_attempts"] == 5


def test_idempotency_key_returns_the_existing_id_and_inserts_nothing(conn):
    first = enqueue(conn, "q", {"n": 1}, idempotency_key="order-42")
    second = enqueue(conn, "q", {"n": 2}, priority=9, idempotency_key="order-42")
    assert second == first
    assert job_count(conn) == 1
    row = job(conn, first)
    assert (row["payload"], row["priority"]) == ({"n": 1}, 0)


def test_idempotency_key_still_holds_once_the_job_is_finished(conn):
    first = enqueue(conn, "q", idempotency_key="k")
    leased = lease_one(conn, "q")
    assert ack(conn, first, leased["lease_token"]) is True
    assert enqueue(conn, "q", idempotency_key="k") == first
    assert job_count(conn) == 1


def test_same_idempotency_key_in_another_queue_is_a_separate_job(conn):
    a = enqueue(conn, "a", idempotency_key="k")
    b = enqueue(conn, "b", idempotency_key="k")
    assert a != b
    assert job(conn, a)["queue_name"] == "a"
    assert job(conn, b)["queue_name"] == "b"
    # and each queue's key keeps answering with that queue's own job
    assert enqueue(conn, "b", idempotency_key="k") == b
    assert enqueue(conn, "a", idempotency_key="k") == a
    assert job_count(conn) == 2


def test_jobs_without_idempotency_key_are_never_deduplicated(conn):
    assert enqueue(conn, "q", {"same": 1}) != enqueue(conn, "q", {"same": 1})
    assert job_count(conn) == 2


def test_idempotency_key_is_free_again_after_the_job_is_purged(conn):
    first = enqueue(conn, "q", {"gen": 1}, idempotency_key="k")
    assert ack(conn, first, lease_one(conn, "q")["lease_token"]) is True
    age_finished(conn, first, "2 hours")
    assert purge(conn, timedelta(hours=1)) == 1
    assert job_count(conn) == 0

    second = enqueue(conn, "q", {"gen": 2}, idempotency_key="k")
    assert second != first
    row = job(conn, second)
    assert (row["payload"], row["status"], row["idempotency_key"]) == ({"gen": 2}, "pending", "k")
    assert job_count(conn) == 1


def test_concurrent_enqueue_with_one_key_is_race_free(dsn, conn):
    sql = "select openqueue.oq_enqueue(queue_name => 'q', payload => %s, idempotency_key => 'same')"
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        a_id = a.execute(sql, [Jsonb({"from": "a"})]).fetchone()[0]  # a's transaction stays open
        b_pid = b.info.backend_pid
        b_call = Background(lambda: b.execute(sql, [Jsonb({"from": "b"})]).fetchone()[0])
        b_call.start()
        wait_until_blocked(conn, b_pid)  # b waits for a's outcome instead of inserting a duplicate
        assert b_call.is_alive()
        a.commit()
        assert b_call.result() == a_id
    assert job_count(conn) == 1
    assert job(conn, a_id)["payload"] == {"from": "a"}


def test_concurrent_enqueue_with_one_key_proceeds_when_the_first_rolls_back(dsn, conn):
    sql = "select openqueue.oq_enqueue(queue_name => 'q', payload => %s, idempotency_key => 'same')"
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        a_id = a.execute(sql, [Jsonb({"from": "a"})]).fetchone()[0]
        b_call = Background(lambda: b.execute(sql, [Jsonb({"from": "b"})]).fetchone()[0])
        b_call.start()
        wait_until_blocked(conn, b.info.backend_pid)
        a.rollback()
        b_id = b_call.result()
    assert b_id != a_id
    assert job_count(conn) == 1
    assert job(conn, b_id)["payload"] == {"from": "b"}


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(conn):
    with conn.transaction(force_rollback=True):
        job_id = enqueue(conn, "q", idempotency_key="k")
        assert job(conn, job_id)["status"] == "pending"  # visible to its own transaction
    assert job_count(conn) == 0
    # the key was not kept either
    assert enqueue(conn, "q", idempotency_key="k") != job_id
    assert job_count(conn) == 1


def test_enqueue_is_invisible_to_other_sessions_until_commit(dsn, conn):
    with psycopg.connect(dsn) as writer:
        job_id = enqueue(writer, "q")
        assert job_count(conn) == 0
        writer.commit()
    assert job(conn, job_id)["status"] == "pending"


# --- oq_enqueue_batch ------------------------------------------------------------------


def test_batch_returns_ids_in_array_order(conn):
    payloads = [{"n": 3}, "text", 17, [1, 2], {"n": 1}, None]
    ids = enqueue_batch(conn, "q", payloads)
    assert len(ids) == len(payloads) == len(set(ids))
    assert [job(conn, i)["payload"] for i in ids] == payloads
    assert all(job(conn, i)["status"] == "pending" for i in ids)


def test_batch_applies_priority_run_at_and_max_attempts_to_every_job(conn):
    run_at = db_now(conn) + timedelta(minutes=5)
    ids = enqueue_batch(conn, "q", [{}, {}], priority=3, run_at=run_at, max_attempts=2)
    for row in (job(conn, i) for i in ids):
        assert (row["queue_name"], row["priority"], row["run_at"], row["max_attempts"], row["attempts"]) == (
            "q",
            3,
            run_at,
            2,
            0,
        )


def test_batch_null_max_attempts_takes_the_queue_default(conn):
    configure(conn, "configured", max_attempts=11)
    (configured_id,) = enqueue_batch(conn, "configured", [{}])
    (default_id,) = enqueue_batch(conn, "plain", [{}], max_attempts=None)
    assert job(conn, configured_id)["max_attempts"] == 11
    assert job(conn, default_id)["max_attempts"] == 5


def test_batch_with_an_empty_array_returns_no_rows_and_writes_nothing(conn):
    assert enqueue_batch(conn, "q", []) == []
    assert job_count(conn) == 0
    assert conn.execute("select count(*) from openqueue.oq_stats()").fetchone()[0] == 0


def test_batch_in_a_rolled_back_transaction_leaves_nothing(conn):
    with conn.transaction(force_rollback=True):
        enqueue_batch(conn, "q", [{}, {}, {}])
        assert job_count(conn) == 3
    assert job_count(conn) == 0
