"""oq_lease (CONTRACT.md sections 2 and 3)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import helpers
from .helpers import (
    ALL_STATES,
    ack,
    configure,
    db_now,
    enqueue,
    expire_lease,
    job,
    lease,
    lease_one,
    make_due,
    make_job,
    nack,
    reap,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn

LEASE_COLUMNS = [
    "id",
    "payload",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "created_at",
    "lease_token",
    "lease_expires_at",
]


def _seed_for_ordering(conn):
    """Jobs enqueued in a scrambled order; returns their ids in the documented lease order."""
    now = db_now(conn)
    specs = [  # (label, priority, run_at offset in seconds)
        ("low-old", 0, -300),
        ("high-new", 5, -10),
        ("mid-tie-a", 1, -60),
        ("high-old", 5, -200),
        ("mid-tie-b", 1, -60),  # same priority and run_at as mid-tie-a: the lower id wins
        ("negative", -3, -1000),
        ("mid-older", 1, -100),
    ]
    ids = {
        label: enqueue(conn, "q", {"label": label}, priority=prio, run_at=now + timedelta(seconds=off))
        for label, prio, off in specs
    }
    order = ["high-old", "high-new", "mid-older", "mid-tie-a", "mid-tie-b", "low-old", "negative"]
    return [ids[label] for label in order]


def test_lease_order_is_priority_desc_then_run_at_then_id(conn):
    expected = _seed_for_ordering(conn)
    leased = [lease_one(conn, "q")["id"] for _ in expected]
    assert leased == expected
    assert lease(conn, "q") == []


def test_batch_lease_returns_up_to_batch_size_rows_in_lease_order(conn):
    expected = _seed_for_ordering(conn)
    first = lease(conn, "q", batch_size=3)
    assert [r["id"] for r in first] == expected[:3]
    rest = lease(conn, "q", batch_size=100)
    assert [r["id"] for r in rest] == expected[3:]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    jobs=st.lists(
        st.tuples(st.integers(-3, 3), st.integers(-5, 0)),  # (priority, run_at minutes ago, with ties)
        min_size=1,
        max_size=12,
    ),
    batch_size=st.integers(1, 5),
)
def test_lease_order_property(conn, jobs, batch_size):
    conn.execute("delete from openqueue.jobs")
    now = db_now(conn)
    rows = []
    for prio, minutes in jobs:
        run_at = now + timedelta(minutes=minutes)
        rows.append((-prio, run_at, enqueue(conn, "q", priority=prio, run_at=run_at)))
    expected = [job_id for _, _, job_id in sorted(rows)]
    leased = []
    while batch := lease(conn, "q", batch_size=batch_size):
        assert len(batch) <= batch_size
        leased += [r["id"] for r in batch]
    assert leased == expected


def test_lease_returns_the_documented_columns_and_values(conn):
    created = db_now(conn)
    job_id = enqueue(conn, "q", {"k": "v"}, priority=2, max_attempts=4, run_at=created - timedelta(seconds=5))
    cur = conn.execute("select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w-7')")
    assert [c.name for c in cur.description] == LEASE_COLUMNS
    row = dict(zip(LEASE_COLUMNS, cur.fetchone(), strict=True))
    stored = job(conn, job_id)
    assert row["id"] == job_id
    assert (row["payload"], row["priority"], row["attempts"], row["max_attempts"]) == ({"k": "v"}, 2, 1, 4)
    assert (row["run_at"], row["created_at"]) == (stored["run_at"], stored["created_at"])
    assert row["lease_token"] is not None
    assert row["lease_expires_at"] == stored["lease_expires_at"]


def test_lease_marks_the_job_processing_and_records_the_worker(conn):
    job_id = enqueue(conn, "q")
    leased = lease_one(conn, "q", "worker-A")
    row = job(conn, job_id)
    assert (row["status"], row["attempts"], row["leased_by"]) == ("processing", 1, "worker-A")
    assert row["lease_expires_at"] == leased["lease_expires_at"]


def test_zero_rows_when_nothing_is_due(conn):
    assert lease(conn, "q") == []  # empty queue
    enqueue(conn, "other")
    enqueue(conn, "q", run_at=db_now(conn) + timedelta(minutes=1))
    assert lease(conn, "q", batch_size=10) == []  # other queue's job and a future job are not leased


def test_future_run_at_is_not_leased_until_due(conn):
    job_id = enqueue(conn, "q", run_at=db_now(conn) + timedelta(hours=1))
    assert lease(conn, "q") == []
    assert job(conn, job_id)["status"] == "pending"
    make_due(conn, job_id)
    assert lease_one(conn, "q")["id"] == job_id


def test_a_job_due_exactly_now_is_leased(conn):
    with conn.transaction():  # one now() for both calls: run_at = now() is due
        job_id = enqueue(conn, "q")
        assert job(conn, job_id)["run_at"] == db_now(conn)
        assert lease_one(conn, "q")["id"] == job_id


def test_batch_size_is_an_upper_bound(conn):
    ids = [enqueue(conn, "q") for _ in range(3)]
    assert [r["id"] for r in lease(conn, "q", batch_size=10)] == ids
    more = [enqueue(conn, "q") for _ in range(5)]
    assert [r["id"] for r in lease(conn, "q", batch_size=2)] == more[:2]
    assert [r["id"] for r in lease(conn, "q")] == more[2:3]  # default batch_size is 1


def test_each_lease_increments_attempts(conn):
    job_id = enqueue(conn, "q")
    for attempt in (1, 2, 3):
        leased = lease_one(conn, "q")
        assert leased["attempts"] == attempt
        assert job(conn, job_id)["attempts"] == attempt
        assert nack(conn, job_id, leased["lease_token"], retry_in=timedelta(0)) == "failed"


def test_every_lease_gets_a_fresh_token(conn):
    ids = [enqueue(conn, "q") for _ in range(3)]
    batch = lease(conn, "q", batch_size=3)
    tokens = {r["lease_token"] for r in batch}
    assert len(tokens) == 3 and None not in tokens

    seen = set(tokens)
    for _ in range(2):  # re-lease the first job after a nack and after a reap
        assert nack(conn, ids[0], batch[0]["lease_token"], retry_in=timedelta(0)) == "failed"
        batch[0] = lease_one(conn, "q")
        assert batch[0]["lease_token"] not in seen
        seen.add(batch[0]["lease_token"])
    expire_lease(conn, ids[0])
    assert reap(conn) == 1
    assert lease_one(conn, "q")["lease_token"] not in seen


def test_lease_expires_after_30_seconds_by_default(conn):
    enqueue(conn, "q")
    with conn.transaction():
        now = db_now(conn)
        leased = lease_one(conn, "q")
    assert leased["lease_expires_at"] == now + timedelta(seconds=30)


def test_lease_seconds_null_uses_the_queue_setting(conn):
    configure(conn, "q", lease_seconds=120)
    enqueue(conn, "q")
    enqueue(conn, "q")
    with conn.transaction():
        now = db_now(conn)
        omitted = lease_one(conn, "q")
        explicit_null = lease_one(conn, "q", lease_seconds=None)
    assert omitted["lease_expires_at"] == now + timedelta(seconds=120)
    assert explicit_null["lease_expires_at"] == now + timedelta(seconds=120)


def test_explicit_lease_seconds_beats_the_queue_setting(conn):
    configure(conn, "q", lease_seconds=120)
    enqueue(conn, "q")
    with conn.transaction():
        now = db_now(conn)
        leased = lease_one(conn, "q", lease_seconds=7)
    assert leased["lease_expires_at"] == now + timedelta(seconds=7)
    assert job(conn, leased["id"])["lease_expires_at"] == now + timedelta(seconds=7)


def test_a_processing_job_is_not_leased_again(conn):
    job_id = enqueue(conn, "q")
    first = lease_one(conn, "q")
    assert lease(conn, "q", batch_size=10) == []
    # not even once its lease has expired: only oq_reap hands it out again
    expire_lease(conn, job_id)
    assert lease(conn, "q", batch_size=10) == []
    assert ack(conn, job_id, first["lease_token"]) is True


def test_finished_jobs_are_never_leased(conn):
    for state in ("completed", "dead", "cancelled"):
        job_id, _ = make_job(conn, state)
        conn.execute("update openqueue.jobs set run_at = now() - interval '1 hour' where id = %s", [job_id])
    assert lease(conn, "q", batch_size=10) == []


def test_only_pending_and_failed_jobs_are_leased(conn):
    made = {state: make_job(conn, state)[0] for state in ALL_STATES}
    make_due(conn, made["failed"])
    leased = {r["id"] for r in lease(conn, "q", batch_size=10)}
    assert leased == {made["pending"], made["failed"]}


def test_failed_job_waits_for_its_run_at(conn):
    job_id = enqueue(conn, "q")
    token = lease_one(conn, "q")["lease_token"]
    assert nack(conn, job_id, token, error="retry later", retry_in=timedelta(minutes=10)) == "failed"
    assert lease(conn, "q") == []
    assert job(conn, job_id)["status"] == "failed"
    make_due(conn, job_id)
    again = lease_one(conn, "q")
    assert (again["id"], again["attempts"]) == (job_id, 2)
    assert job(conn, job_id)["status"] == "processing"
