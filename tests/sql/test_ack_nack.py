"""oq_heartbeat, oq_ack and oq_nack (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from . import helpers
from .helpers import (
    ack,
    configure,
    db_now,
    enqueue,
    expire_lease,
    heartbeat,
    job,
    lease,
    lease_one,
    make_due,
    nack,
    reap,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


@pytest.fixture
def leased(conn):
    """One processing job in queue 'q': its lease row (id, lease_token, ...)."""
    enqueue(conn, "q", {"task": 1})
    return lease_one(conn, "q")


# --- oq_heartbeat ----------------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_returns_the_new_expiry(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        expiry = heartbeat(conn, leased["id"], leased["lease_token"], lease_seconds=600)
    assert expiry == now + timedelta(seconds=600)
    row = job(conn, leased["id"])
    assert row["lease_expires_at"] == expiry
    assert row["status"] == "processing"


def test_heartbeat_null_lease_seconds_uses_the_builtin_default(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        expiry = heartbeat(conn, leased["id"], leased["lease_token"], lease_seconds=None)
    assert expiry == now + timedelta(seconds=30)


def test_heartbeat_null_lease_seconds_uses_the_queue_setting(conn):
    configure(conn, "slow", lease_seconds=90)
    enqueue(conn, "slow")
    held = lease_one(conn, "slow", lease_seconds=5)
    with conn.transaction():
        now = db_now(conn)
        omitted = heartbeat(conn, held["id"], held["lease_token"])
        explicit_null = heartbeat(conn, held["id"], held["lease_token"], lease_seconds=None)
    assert omitted == explicit_null == now + timedelta(seconds=90)


@pytest.mark.parametrize("case", ["wrong token", "unknown job", "acked job", "nacked job"])
def test_heartbeat_returns_null_when_the_lease_is_not_held(conn, leased, case):
    job_id, token = leased["id"], leased["lease_token"]
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "unknown job":
        job_id = job_id + 1000
    elif case == "acked job":
        assert ack(conn, job_id, token) is True
    elif case == "nacked job":
        assert nack(conn, job_id, token, error="x") == "failed"
    before = job(conn, leased["id"])
    assert heartbeat(conn, job_id, token, lease_seconds=600) is None
    assert job(conn, leased["id"]) == before


def test_expired_but_unreaped_lease_still_heartbeats(conn, leased):
    expire_lease(conn, leased["id"])
    with conn.transaction():
        now = db_now(conn)
        expiry = heartbeat(conn, leased["id"], leased["lease_token"])
    assert expiry == now + timedelta(seconds=30)
    assert reap(conn) == 0  # the heartbeat saved it
    assert job(conn, leased["id"])["status"] == "processing"


def test_expired_but_unreaped_lease_still_acks(conn, leased):
    expire_lease(conn, leased["id"])
    assert ack(conn, leased["id"], leased["lease_token"], result={"late": True}) is True
    row = job(conn, leased["id"])
    assert (row["status"], row["result"]) == ("completed", {"late": True})


# --- oq_ack ----------------------------------------------------------------------------


def test_ack_completes_the_job_and_stores_the_result(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        assert ack(conn, leased["id"], leased["lease_token"], result={"sent": 3}) is True
    row = job(conn, leased["id"])
    assert row["status"] == "completed"
    assert row["result"] == {"sent": 3}
    assert row["finished_at"] == now
    assert row["lease_expires_at"] is None
    assert (row["attempts"], row["payload"], row["errors"]) == (1, {"task": 1}, [])


def test_ack_without_result_stores_null(conn, leased):
    assert ack(conn, leased["id"], leased["lease_token"]) is True
    row = job(conn, leased["id"])
    assert (row["status"], row["result"]) == ("completed", None)


def test_ack_with_a_stale_token_after_reap_and_release_is_false(conn, leased):
    expire_lease(conn, leased["id"])
    assert reap(conn) == 1
    current = lease_one(conn, "q")
    assert current["id"] == leased["id"]
    before = job(conn, leased["id"])
    assert ack(conn, leased["id"], leased["lease_token"], result={"stale": True}) is False
    assert job(conn, leased["id"]) == before
    assert ack(conn, current["id"], current["lease_token"]) is True


@pytest.mark.parametrize("case", ["wrong token", "unknown id", "second ack"])
def test_ack_is_false_and_changes_nothing_without_the_lease(conn, leased, case):
    job_id, token = leased["id"], leased["lease_token"]
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "unknown id":
        job_id = job_id + 1000
    elif case == "second ack":
        assert ack(conn, job_id, token, result={"first": True}) is True
    before = job(conn, leased["id"])
    assert ack(conn, job_id, token, result={"second": True}) is False
    assert job(conn, leased["id"]) == before


# --- oq_nack ---------------------------------------------------------------------------


def test_nack_with_attempts_left_fails_the_job_until_after_backoff(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, leased["id"], leased["lease_token"], error="smtp down") == "failed"
    row = job(conn, leased["id"])
    assert row["status"] == "failed"
    assert row["lease_expires_at"] is None
    assert row["finished_at"] is None
    # attempt 1 with the built-in base of 1 second: delay in [1 s, 1.1 s]
    assert timedelta(seconds=1) <= row["run_at"] - now <= timedelta(seconds=1.1)
    assert lease(conn, "q") == []  # not before run_at


def test_nack_records_each_error_with_attempt_and_time(conn, leased):
    job_id = leased["id"]
    with conn.transaction():
        first_at = db_now(conn)
        assert nack(conn, job_id, leased["lease_token"], error="first failure") == "failed"
    make_due(conn, job_id)
    second = lease_one(conn, "q")
    with conn.transaction():
        second_at = db_now(conn)
        assert nack(conn, job_id, second["lease_token"], error="second failure") == "failed"
    errors = job(conn, job_id)["errors"]
    assert [(e["attempt"], e["error"]) for e in errors] == [(1, "first failure"), (2, "second failure")]
    assert all(set(e) == {"attempt", "error", "at"} for e in errors)
    # "at" is the time of the failure, as a JSON timestamp
    ats = conn.execute(
        "select (e.value ->> 'at')::timestamptz from openqueue.jobs as j,"
        " jsonb_array_elements(j.errors) with ordinality as e where j.id = %s order by e.ordinality",
        [job_id],
    ).fetchall()
    assert [a for (a,) in ats] == [first_at, second_at]


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (6, 20), (9, 20)],  # base 2 s, cap 20 s
)
def test_backoff_doubles_from_base_and_is_capped_at_max(conn, attempt, delay):
    configure(conn, "q", backoff_base=timedelta(seconds=2), backoff_max=timedelta(seconds=20))
    job_id = enqueue(conn, "q", max_attempts=50)
    # attempt n: the job has been leased n-1 times before
    conn.execute("update openqueue.jobs set attempts = %s where id = %s", [attempt - 1, job_id])
    held = lease_one(conn, "q")
    assert held["attempts"] == attempt
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, job_id, held["lease_token"], error="e") == "failed"
    waited = job(conn, job_id)["run_at"] - now
    assert timedelta(seconds=delay) <= waited <= timedelta(seconds=delay * 1.1)


def test_backoff_over_successive_real_attempts(conn):
    configure(conn, "q", backoff_base=timedelta(seconds=3), backoff_max=timedelta(seconds=10))
    job_id = enqueue(conn, "q", max_attempts=10)
    for attempt, delay in [(1, 3), (2, 6), (3, 10), (4, 10)]:
        held = lease_one(conn, "q")
        assert held["attempts"] == attempt
        with conn.transaction():
            now = db_now(conn)
            assert nack(conn, job_id, held["lease_token"]) == "failed"
        waited = job(conn, job_id)["run_at"] - now
        assert timedelta(seconds=delay) <= waited <= timedelta(seconds=delay * 1.1)
        make_due(conn, job_id)


@pytest.mark.parametrize("attempt", [13, 21, 1100])  # 2^12 s is already over an hour
def test_backoff_builtin_cap_is_one_hour(conn, attempt):
    job_id = enqueue(conn, "q", max_attempts=5000)
    conn.execute("update openqueue.jobs set attempts = %s where id = %s", [attempt - 1, job_id])
    held = lease_one(conn, "q")
    assert held["attempts"] == attempt
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, job_id, held["lease_token"]) == "failed"
    waited = job(conn, job_id)["run_at"] - now
    assert timedelta(hours=1) <= waited <= timedelta(hours=1.1)


def test_retry_in_overrides_the_backoff(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, leased["id"], leased["lease_token"], retry_in=timedelta(minutes=5)) == "failed"
    assert job(conn, leased["id"])["run_at"] == now + timedelta(minutes=5)


def test_retry_in_zero_makes_the_job_leasable_at_once(conn, leased):
    assert nack(conn, leased["id"], leased["lease_token"], retry_in=timedelta(0)) == "failed"
    again = lease_one(conn, "q")
    assert (again["id"], again["attempts"]) == (leased["id"], 2)


def test_nack_with_retry_false_kills_the_job_despite_attempts_left(conn, leased):
    with conn.transaction():
        now = db_now(conn)
        assert nack(conn, leased["id"], leased["lease_token"], error="bad payload", retry=False) == "dead"
    row = job(conn, leased["id"])
    assert (row["status"], row["attempts"], row["max_attempts"]) == ("dead", 1, 5)
    assert row["finished_at"] == now
    assert [(e["attempt"], e["error"]) for e in row["errors"]] == [(1, "bad payload")]
    assert lease(conn, "q") == []


def test_nack_on_the_last_attempt_kills_the_job(conn):
    job_id = enqueue(conn, "q", max_attempts=2)
    first = lease_one(conn, "q")
    assert nack(conn, job_id, first["lease_token"], error="one", retry_in=timedelta(0)) == "failed"
    second = lease_one(conn, "q")
    assert second["attempts"] == 2
    assert nack(conn, job_id, second["lease_token"], error="two", retry_in=timedelta(0)) == "dead"
    row = job(conn, job_id)
    assert row["status"] == "dead"
    assert [(e["attempt"], e["error"]) for e in row["errors"]] == [(1, "one"), (2, "two")]
    assert lease(conn, "q") == []


@pytest.mark.parametrize("case", ["wrong token", "unknown id", "already nacked", "acked"])
def test_nack_returns_null_and_changes_nothing_without_the_lease(conn, leased, case):
    job_id, token = leased["id"], leased["lease_token"]
    if case == "wrong token":
        token = uuid.uuid4()
    elif case == "unknown id":
        job_id = job_id + 1000
    elif case == "already nacked":
        assert nack(conn, job_id, token, error="first") == "failed"
    elif case == "acked":
        assert ack(conn, job_id, token) is True
    before = job(conn, leased["id"])
    assert nack(conn, job_id, token, error="late", retry=False) is None
    assert job(conn, leased["id"]) == before


def test_a_nacked_lease_can_no_longer_ack_or_heartbeat(conn, leased):
    assert nack(conn, leased["id"], leased["lease_token"], error="x") == "failed"
    assert ack(conn, leased["id"], leased["lease_token"]) is False
    assert heartbeat(conn, leased["id"], leased["lease_token"]) is None
    assert job(conn, leased["id"])["status"] == "failed"
