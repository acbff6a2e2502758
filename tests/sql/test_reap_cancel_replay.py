"""oq_reap, oq_cancel and oq_replay (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from . import helpers
from .helpers import (
    ALL_STATES,
    ack,
    cancel,
    db_now,
    enqueue,
    expire_lease,
    heartbeat,
    job,
    lease,
    lease_one,
    make_due,
    make_job,
    nack,
    reap,
    replay,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


# --- oq_reap ---------------------------------------------------------------------------


def test_reap_returns_an_expired_job_to_pending_with_a_lease_expired_error(conn):
    job_id = enqueue(conn, "q", {"n": 1})
    lease_one(conn, "q")
    expire_lease(conn, job_id)
    with conn.transaction():
        now = db_now(conn)
        assert reap(conn) == 1
    row = job(conn, job_id)
    assert row["status"] == "pending"
    assert row["lease_expires_at"] is None
    assert row["attempts"] == 1  # the lost attempt counts
    assert row["errors"] == [{"attempt": 1, "error": "lease expired", "at": row["errors"][0]["at"]}]
    entry_at = conn.execute(
        "select (errors -> 0 ->> 'at')::timestamptz from openqueue.jobs where id = %s", [job_id]
    ).fetchone()[0]
    assert entry_at == now


def test_reap_kills_an_expired_job_with_no_attempts_left(conn, pg_server):
    job_id = enqueue(conn, "q", max_attempts=1)
    lease_one(conn, "q")
    expire_lease(conn, job_id)
    with conn.transaction():
        now = db_now(conn)
        assert reap(conn) == 1
    row = job(conn, job_id)
    if pg_server.kind == "citus":
        # now() in the statement the coordinator sent to the worker node is that node's transaction
        # time (docs/scaling.md, "Limits found"): after the caller's now(), by the hop.
        after = db_now(conn)
        assert (row["status"], row["attempts"]) == ("dead", 1)
        assert now <= row["finished_at"] <= after
    else:
        assert (row["status"], row["attempts"], row["finished_at"]) == ("dead", 1, now)
    assert [(e["attempt"], e["error"]) for e in row["errors"]] == [(1, "lease expired")]
    assert lease(conn, "q") == []


def test_reap_counts_every_reclaimed_job(conn):
    back = [enqueue(conn, "a"), enqueue(conn, "a"), enqueue(conn, "b")]
    dead = enqueue(conn, "b", max_attempts=1)
    held = [enqueue(conn, "a")]
    for queue, n in (("a", 3), ("b", 2)):
        lease(conn, queue, batch_size=n)
    for job_id in [*back, dead]:
        expire_lease(conn, job_id)
    assert reap(conn) == 4
    assert [job(conn, i)["status"] for i in back] == ["pending"] * 3
    assert job(conn, dead)["status"] == "dead"
    assert job(conn, held[0])["status"] == "processing"
    assert reap(conn) == 0  # nothing left to reclaim


def test_reap_leaves_unexpired_leases_and_other_states_alone(conn):
    made = {state: make_job(conn, state)[0] for state in ALL_STATES}
    before = {state: job(conn, job_id) for state, job_id in made.items()}
    assert reap(conn) == 0
    assert {state: job(conn, job_id) for state, job_id in made.items()} == before


def test_after_reap_the_job_is_leased_again_and_the_old_token_is_dead(conn):
    job_id = enqueue(conn, "q")
    old = lease_one(conn, "q", "crashed-worker")
    expire_lease(conn, job_id)
    assert reap(conn) == 1
    # reaped but not yet re-leased: the old token is already revoked
    assert heartbeat(conn, job_id, old["lease_token"]) is None
    new = lease_one(conn, "q", "healthy-worker")
    assert (new["id"], new["attempts"]) == (job_id, 2)
    assert new["lease_token"] != old["lease_token"]
    assert heartbeat(conn, job_id, old["lease_token"]) is None
    assert ack(conn, job_id, old["lease_token"]) is False
    assert nack(conn, job_id, old["lease_token"], error="late") is None
    assert job(conn, job_id)["leased_by"] == "healthy-worker"
    assert heartbeat(conn, job_id, new["lease_token"]) is not None
    assert ack(conn, job_id, new["lease_token"], result=1) is True
    row = job(conn, job_id)
    assert (row["status"], row["result"]) == ("completed", 1)


def test_concurrent_reaps_reclaim_each_job_once(dsn, conn):
    ids = [enqueue(conn, "q") for _ in range(5)]
    lease(conn, "q", batch_size=5)
    for job_id in ids:
        expire_lease(conn, job_id)
    with psycopg.connect(dsn) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute("set lock_timeout = '2s'")
        assert reap(a) == 5  # a's transaction still open, holding the rows
        assert reap(b) == 0  # b skips them instead of waiting or double-reclaiming
        a.commit()
        assert reap(b) == 0
    for job_id in ids:
        row = job(conn, job_id)
        assert row["status"] == "pending"
        assert [e["error"] for e in row["errors"]] == ["lease expired"]


# --- oq_cancel -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["pending", "failed", "processing"])
def test_cancel_of_a_live_job_is_true_and_cancels_it(conn, state):
    job_id, _ = make_job(conn, state)
    errors_before = job(conn, job_id)["errors"]
    with conn.transaction():
        now = db_now(conn)
        assert cancel(conn, job_id) is True
    row = job(conn, job_id)
    assert (row["status"], row["finished_at"], row["lease_expires_at"]) == ("cancelled", now, None)
    assert row["errors"] == errors_before  # cancel adds no error entry
    make_due(conn, job_id)
    assert lease(conn, "q") == []


def test_cancel_revokes_a_held_lease(conn):
    job_id, token = make_job(conn, "processing")
    assert cancel(conn, job_id) is True
    assert ack(conn, job_id, token, result={"too": "late"}) is False
    assert heartbeat(conn, job_id, token) is None
    assert nack(conn, job_id, token, error="late") is None
    row = job(conn, job_id)
    assert (row["status"], row["result"], row["errors"]) == ("cancelled", None, [])
    expire_lease(conn, job_id)
    assert reap(conn) == 0
    assert job(conn, job_id)["status"] == "cancelled"


@pytest.mark.parametrize("state", ["completed", "dead", "cancelled"])
def test_cancel_of_a_finished_job_is_false_and_changes_nothing(conn, state):
    job_id, _ = make_job(conn, state)
    before = job(conn, job_id)
    assert cancel(conn, job_id) is False
    assert job(conn, job_id) == before


def test_cancel_of_an_unknown_id_is_false(conn):
    assert cancel(conn, 424242) is False
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0


# --- oq_replay -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["dead", "cancelled"])
def test_replay_returns_a_finished_job_to_pending_due_now_with_attempts_reset(conn, state):
    job_id, _ = make_job(conn, state, run_at=db_now(conn) - timedelta(hours=3))
    errors_before = job(conn, job_id)["errors"]
    with conn.transaction():
        now = db_now(conn)
        assert replay(conn, job_id) is True
    row = job(conn, job_id)
    assert (row["status"], row["run_at"], row["attempts"]) == ("pending", now, 0)
    assert (row["finished_at"], row["lease_expires_at"], row["result"]) == (None, None, None)
    assert row["errors"] == errors_before  # history kept, nothing added
    again = lease_one(conn, "q")
    assert (again["id"], again["attempts"]) == (job_id, 1)
    assert ack(conn, job_id, again["lease_token"]) is True


def test_replay_makes_a_cancelled_future_job_due_now(conn):
    job_id = enqueue(conn, "q", run_at=db_now(conn) + timedelta(days=1))
    assert cancel(conn, job_id) is True
    assert replay(conn, job_id) is True
    assert lease_one(conn, "q")["id"] == job_id


def test_replay_keeps_the_whole_error_history(conn):
    job_id = enqueue(conn, "q", max_attempts=2)
    first = lease_one(conn, "q")
    assert nack(conn, job_id, first["lease_token"], error="one", retry_in=timedelta(0)) == "failed"
    second = lease_one(conn, "q")
    expire_lease(conn, job_id)
    assert reap(conn) == 1  # second attempt lost: dead
    assert second["attempts"] == 2
    assert replay(conn, job_id) is True
    assert [(e["attempt"], e["error"]) for e in job(conn, job_id)["errors"]] == [
        (1, "one"),
        (2, "lease expired"),
    ]
    # and the replayed job gets its full max_attempts again
    third = lease_one(conn, "q")
    assert third["attempts"] == 1
    assert nack(conn, job_id, third["lease_token"], error="three", retry_in=timedelta(0)) == "failed"


@pytest.mark.parametrize("state", ["pending", "failed", "processing", "completed"])
def test_replay_of_any_other_state_is_false_and_changes_nothing(conn, state):
    job_id, _ = make_job(conn, state)
    before = job(conn, job_id)
    assert replay(conn, job_id) is False
    assert job(conn, job_id) == before


def test_replay_of_an_unknown_id_is_false(conn):
    assert replay(conn, 424242) is False


def test_wrong_token_never_touches_a_replayed_job(conn):
    job_id, token = make_job(conn, "dead")
    assert replay(conn, job_id) is True
    assert ack(conn, job_id, token) is False
    assert ack(conn, job_id, uuid.uuid4()) is False
    assert job(conn, job_id)["status"] == "pending"
