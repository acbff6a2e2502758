"""The synchronous Client against a real database: every method, its types, its errors."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from openqueue_py import (
    Client,
    HealthCheck,
    InvalidArgument,
    Job,
    JobRecord,
    JobState,
    Leased,
    OpenQueueError,
    QueueStats,
)

# -- the seed example of CONTRACT section 5 --------------------------------------------


def test_seed_example_runs_as_written(dsn):
    sent = []

    def send_email(payload):
        sent.append(payload)

    # CONTRACT.md section 5, copied verbatim:
    from openqueue_py import Client

    client = Client(dsn)
    job_id = client.enqueue(queue_name="send_email", payload={"to": "user@example.com"})
    leased = client.lease(queue_name="send_email", worker_id="worker-1")
    if leased:
        send_email(leased.job.payload)
        client.ack(leased.job.id, leased.lease_token)
    # end of the example

    assert sent == [{"to": "user@example.com"}]
    record = client.get_job(job_id)
    assert record.status == JobState.COMPLETED
    assert record.finished_at is not None
    client.close()


# -- helpers -------------------------------------------------------------------------


def _db_now(conn: psycopg.Connection) -> datetime:
    return conn.execute("select now()").fetchone()[0]


def _status(conn: psycopg.Connection, job_id: int) -> str | None:
    row = conn.execute("select status from openqueue.jobs where id = %s", (job_id,)).fetchone()
    return row[0] if row else None


def _expire(conn: psycopg.Connection, job_id: int) -> None:
    conn.execute(
        "update openqueue.live_jobs set lease_expires_at = now() - interval '1 second' where id = %s",
        (job_id,),
    )


# -- round trips -----------------------------------------------------------------------


def test_enqueue_returns_int_and_get_job_returns_a_record(client, conn):
    job_id = client.enqueue("emails", {"to": "a@example.com", "n": [1, 2.5, None, True]})
    assert type(job_id) is int

    record = client.get_job(job_id)
    assert isinstance(record, JobRecord)
    assert record.id == job_id
    assert record.queue_name == "emails"
    assert record.payload == {"to": "a@example.com", "n": [1, 2.5, None, True]}
    assert record.status is JobState.PENDING
    assert record.priority == 0
    assert record.attempts == 0
    assert record.max_attempts == 5  # built-in default
    assert record.leased_by is None and record.lease_expires_at is None
    assert record.result is None and record.errors == []
    assert record.idempotency_key is None and record.finished_at is None
    assert isinstance(record.run_at, datetime) and record.run_at.tzinfo is not None
    assert isinstance(record.created_at, datetime)
    assert record.run_at <= _db_now(conn)

    assert client.get_job(job_id + 1000) is None


def test_enqueue_with_every_argument(client, conn):
    run_at = _db_now(conn) + timedelta(hours=1)
    job_id = client.enqueue(
        queue_name="reports",
        payload=["a", 1],
        priority=7,
        run_at=run_at,
        max_attempts=2,
        idempotency_key="k-1",
    )
    record = client.get_job(job_id)
    assert record.payload == ["a", 1]
    assert record.priority == 7
    assert record.run_at == run_at
    assert record.max_attempts == 2
    assert record.idempotency_key == "k-1"
    # Not due yet: nothing to lease.
    assert client.lease("reports", "w") is None
    # Same key, same queue: the same id, nothing inserted.
    assert client.enqueue("reports", {"other": True}, idempotency_key="k-1") == job_id
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 1
    # The key is per queue.
    assert client.enqueue("other", {}, idempotency_key="k-1") != job_id


def test_enqueue_scalar_payloads(client):
    for payload in ("text", 3, 2.5, True, [], {}):
        assert client.get_job(client.enqueue("q", payload)).payload == payload


def test_enqueue_batch(client, conn):
    ids = client.enqueue_batch("batch", [{"n": 1}, {"n": 2}, {"n": 3}], priority=2, max_attempts=3)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert len(ids) == 3 and ids == sorted(ids)
    records = [client.get_job(i) for i in ids]
    assert [r.payload for r in records] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert {(r.priority, r.max_attempts, r.status) for r in records} == {(2, 3, JobState.PENDING)}

    assert client.enqueue_batch("batch", []) == []
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 3

    later = _db_now(conn) + timedelta(minutes=5)
    (delayed,) = client.enqueue_batch("batch", ({"n": 4},), run_at=later)
    assert client.get_job(delayed).run_at == later


def test_lease_returns_leased_or_none(client, conn):
    assert client.lease("work", "worker-1") is None

    job_id = client.enqueue("work", {"x": 1}, priority=3, max_attempts=4)
    leased = client.lease("work", "worker-1")
    assert isinstance(leased, Leased)
    assert isinstance(leased.job, Job)
    assert isinstance(leased.lease_token, uuid.UUID)
    assert isinstance(leased.lease_expires_at, datetime)
    job = leased.job
    assert job.id == job_id
    assert job.queue_name == "work"
    assert job.payload == {"x": 1}
    assert job.priority == 3
    assert job.attempts == 1
    assert job.max_attempts == 4
    record = client.get_job(job_id)
    assert job.run_at == record.run_at
    assert job.created_at == record.created_at
    assert record.status is JobState.PROCESSING
    assert record.leased_by == "worker-1"
    assert record.lease_expires_at == leased.lease_expires_at
    # Default lease: 30 seconds from the lease's now().
    remaining = leased.lease_expires_at - _db_now(conn)
    assert timedelta(seconds=25) < remaining <= timedelta(seconds=30)

    assert client.lease("work", "worker-2") is None

    client.enqueue("work", {"x": 2})
    short = client.lease("work", "worker-1", lease_seconds=5)
    assert short.lease_expires_at - _db_now(conn) <= timedelta(seconds=5)


def test_lease_many_returns_a_list_in_lease_order(client):
    assert client.lease_many("many", "w", batch_size=5) == []

    low = client.enqueue("many", {"p": 0})
    high = client.enqueue("many", {"p": 9}, priority=9)
    mid_a = client.enqueue("many", {"p": 5}, priority=5)
    mid_b = client.enqueue("many", {"p": 5}, priority=5)

    first = client.lease_many("many", "w", batch_size=3)
    assert isinstance(first, list) and all(isinstance(x, Leased) for x in first)
    assert [x.job.id for x in first] == [high, mid_a, mid_b]
    assert len({x.lease_token for x in first}) == 3

    rest = client.lease_many(queue_name="many", worker_id="w", lease_seconds=60, batch_size=10)
    assert [x.job.id for x in rest] == [low]
    assert client.lease_many("many", "w", batch_size=10) == []


def test_heartbeat_extends_the_lease(client, conn):
    client.enqueue("hb", {})
    leased = client.lease("hb", "w", lease_seconds=1)
    new_expiry = client.heartbeat(leased.job.id, leased.lease_token, lease_seconds=600)
    assert isinstance(new_expiry, datetime)
    assert new_expiry > leased.lease_expires_at
    assert client.get_job(leased.job.id).lease_expires_at == new_expiry
    # lease_seconds omitted: the queue's setting (30 seconds by default).
    default_expiry = client.heartbeat(leased.job.id, str(leased.lease_token))
    assert default_expiry - _db_now(conn) <= timedelta(seconds=30)
    # A lease that expired but has not been reaped is still held.
    _expire(conn, leased.job.id)
    assert client.heartbeat(leased.job.id, leased.lease_token) is not None
    # A wrong token or an unknown job: NULL, not an error.
    assert client.heartbeat(leased.job.id, uuid.uuid4()) is None
    assert client.heartbeat(leased.job.id + 99, leased.lease_token) is None


def test_ack_completes_and_stores_the_result(client):
    job_id = client.enqueue("acks", {"n": 1})
    leased = client.lease("acks", "w")
    assert client.ack(leased.job.id, leased.lease_token, result={"sent": True}) is True
    record = client.get_job(job_id)
    assert record.status is JobState.COMPLETED
    assert record.result == {"sent": True}
    assert record.finished_at is not None
    assert record.lease_expires_at is None
    # Second ack with the same token: the lease is gone.
    assert client.ack(job_id, leased.lease_token) is False

    other = client.enqueue("acks", {"n": 2})
    leased = client.lease("acks", "w")
    assert client.ack(other, leased.lease_token) is True
    assert client.get_job(other).result is None


def test_ack_many_completes_held_leases_and_returns_their_ids(client, conn):
    ids = client.enqueue_batch("many", [{"n": n} for n in range(4)])
    leased = client.lease_many("many", "w", batch_size=4)
    assert [x.job.id for x in leased] == ids
    first, second, third, fourth = leased
    # A stale token for the second: it is simply absent from the result.
    completed = client.ack_many(
        [first.job.id, second.job.id, third.job.id],
        [first.lease_token, uuid.uuid4(), str(third.lease_token)],
        [{"ok": 1}, "ignored", None],
    )
    assert isinstance(completed, list) and all(type(i) is int for i in completed)
    assert sorted(completed) == [first.job.id, third.job.id]
    assert client.get_job(first.job.id).result == {"ok": 1}
    record = client.get_job(third.job.id)
    assert record.status is JobState.COMPLETED and record.result is None and record.finished_at is not None
    assert client.get_job(second.job.id).status is JobState.PROCESSING
    # results omitted: no results stored; a second ack of the same lease completes nothing.
    assert client.ack_many([second.job.id, fourth.job.id], [second.lease_token, fourth.lease_token]) == [
        second.job.id,
        fourth.job.id,
    ]
    assert client.get_job(fourth.job.id).result is None
    assert client.ack_many([first.job.id], [first.lease_token]) == []
    assert client.ack_many([], []) == []
    statuses = conn.execute("select status, count(*) from openqueue.jobs group by status").fetchall()
    assert statuses == [("completed", 4)]


def test_ack_many_sql_errors_come_unchanged(client):
    leased = client.lease_many("many", "w")
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        client.ack_many([1, 2], [uuid.uuid4()])
    assert info.value.sqlstate == "22023" and not isinstance(info.value, OpenQueueError)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        client.ack_many([1], [uuid.uuid4()], [None, None])
    assert leased == []


def test_purge_batch_set_queue_notify_wait_and_health(client, conn):
    ids = client.enqueue_batch("pb", [{}, {}, {}])
    for leased in client.lease_many("pb", "w", batch_size=3):
        client.ack(leased.job.id, leased.lease_token)
    conn.execute("update openqueue.jobs set finished_at = now() - interval '2 hours'")
    assert client.purge_batch(timedelta(hours=1), max_rows=2) == 2
    assert client.purge_batch(timedelta(hours=1)) == 1
    assert [client.get_job(i) for i in ids] == [None, None, None]

    assert client.set_queue_notify("pb", "when_waiting") is None
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        client.set_queue_notify("pb", "sometimes")
    assert client.wait(["pb"], "w1", seconds=5) is None
    assert client.wait(["pb"], "w1") is None
    with pytest.raises(InvalidArgument):
        client.wait("pb", "w1")

    checks = client.health()
    assert checks and all(isinstance(c, HealthCheck) for c in checks)
    assert {"live_tuples", "dead_tuples"} <= {c.check_name for c in checks}


def test_nack_retry_in_and_backoff_and_dead(client, conn):
    job_id = client.enqueue("nacks", {}, max_attempts=3)

    leased = client.lease("nacks", "w")
    before = _db_now(conn)
    outcome = client.nack(job_id, leased.lease_token, error="boom", retry_in=timedelta(minutes=10))
    assert outcome == "failed"
    record = client.get_job(job_id)
    assert record.status is JobState.FAILED
    assert before + timedelta(minutes=10) <= record.run_at <= _db_now(conn) + timedelta(minutes=10)
    assert record.lease_expires_at is None
    assert [(e["attempt"], e["error"]) for e in record.errors] == [(1, "boom")]
    assert isinstance(record.errors[0]["at"], str)
    assert client.lease("nacks", "w") is None  # not due for 10 minutes

    conn.execute("update openqueue.live_jobs set run_at = now() where id = %s", (job_id,))
    leased = client.lease("nacks", "w")
    assert leased.job.attempts == 2
    # retry_in omitted: exponential backoff, base 1 s after the 2nd failure: 2 s .. 2.2 s.
    start = _db_now(conn)
    assert client.nack(job_id, leased.lease_token, "again") == "failed"
    delay = client.get_job(job_id).run_at - start
    assert timedelta(seconds=2) <= delay <= timedelta(seconds=2.2) + (_db_now(conn) - start)

    conn.execute("update openqueue.live_jobs set run_at = now() where id = %s", (job_id,))
    leased = client.lease("nacks", "w")
    assert leased.job.attempts == 3
    # Last attempt: dead even though retry is true.
    assert client.nack(job_id, leased.lease_token, "last", retry_in=timedelta(0)) == "dead"
    record = client.get_job(job_id)
    assert record.status is JobState.DEAD
    assert [e["error"] for e in record.errors] == ["boom", "again", "last"]
    assert record.finished_at is not None


def test_nack_without_retry_goes_dead_at_once(client):
    job_id = client.enqueue("nacks", {}, max_attempts=5)
    leased = client.lease("nacks", "w")
    assert client.nack(job_id, leased.lease_token, error="fatal", retry=False) == "dead"
    record = client.get_job(job_id)
    assert record.status is JobState.DEAD and record.attempts == 1
    assert record.errors[0]["error"] == "fatal"


def test_lost_lease_is_not_an_exception(client, conn):
    job_id = client.enqueue("lost", {})
    leased = client.lease("lost", "w")
    _expire(conn, job_id)
    assert client.reap() == 1
    # The job went back to pending and someone else holds it now.
    again = client.lease("lost", "w2")
    assert again.job.id == job_id and again.lease_token != leased.lease_token

    assert client.ack(job_id, leased.lease_token) is False
    assert client.nack(job_id, leased.lease_token, "late") is None
    assert client.heartbeat(job_id, leased.lease_token) is None
    record = client.get_job(job_id)
    assert record.status is JobState.PROCESSING and record.leased_by == "w2"

    # Cancel revokes a held lease.
    assert client.cancel(job_id) is True
    assert client.ack(job_id, again.lease_token) is False
    assert client.nack(job_id, again.lease_token, retry=False) is None
    assert client.get_job(job_id).status is JobState.CANCELLED

    # Unknown job, random token.
    assert client.ack(10**12, uuid.uuid4()) is False
    assert client.nack(10**12, uuid.uuid4()) is None


def test_reap_reclaims_expired_leases(client, conn):
    assert client.reap() == 0
    retry_id = client.enqueue("reap", {"n": 1}, max_attempts=2)
    dead_id = client.enqueue("reap", {"n": 2}, max_attempts=1)
    kept_id = client.enqueue("reap", {"n": 3})
    leases = {x.job.id: x for x in client.lease_many("reap", "w", batch_size=3)}
    _expire(conn, retry_id)
    _expire(conn, dead_id)

    reaped = client.reap()
    assert type(reaped) is int and reaped == 2
    retry = client.get_job(retry_id)
    assert retry.status is JobState.PENDING and retry.attempts == 1
    assert [e["error"] for e in retry.errors] == ["lease expired"]
    dead = client.get_job(dead_id)
    assert dead.status is JobState.DEAD and [e["error"] for e in dead.errors] == ["lease expired"]
    assert client.get_job(kept_id).status is JobState.PROCESSING
    assert client.ack(kept_id, leases[kept_id].lease_token) is True
    assert client.reap() == 0


def test_cancel_and_replay(client):
    pending = client.enqueue("cr", {"n": 1})
    assert client.cancel(pending) is True
    assert client.cancel(pending) is False
    assert client.get_job(pending).status is JobState.CANCELLED
    assert client.replay(pending) is True
    assert client.replay(pending) is False
    record = client.get_job(pending)
    assert record.status is JobState.PENDING and record.attempts == 0 and record.finished_at is None

    leased = client.lease("cr", "w")
    assert client.replay(pending) is False  # processing: not replayable
    assert client.ack(pending, leased.lease_token) is True
    assert client.cancel(pending) is False  # completed: not cancellable
    assert client.replay(pending) is False  # completed: not replayable

    dead = client.enqueue("cr", {"n": 2})
    leased = client.lease("cr", "w")
    assert client.nack(dead, leased.lease_token, "bad", retry=False) == "dead"
    assert client.replay(dead) is True
    record = client.get_job(dead)
    assert record.status is JobState.PENDING and record.attempts == 0
    assert [e["error"] for e in record.errors] == ["bad"]  # history kept

    assert client.cancel(10**12) is False
    assert client.replay(10**12) is False


def test_configure_queue_with_timedeltas(client, conn):
    result = client.configure_queue(
        "configured",
        max_attempts=2,
        lease_seconds=120,
        backoff_base=timedelta(seconds=10),
        backoff_max=timedelta(minutes=1),
    )
    assert result is None
    row = conn.execute(
        "select max_attempts, lease_seconds, backoff_base, backoff_max from openqueue.queues "
        "where queue_name = 'configured'"
    ).fetchone()
    assert row == (2, 120, timedelta(seconds=10), timedelta(minutes=1))

    # NULL leaves a setting unchanged.
    client.configure_queue("configured", lease_seconds=90)
    row = conn.execute(
        "select max_attempts, lease_seconds, backoff_base, backoff_max from openqueue.queues "
        "where queue_name = 'configured'"
    ).fetchone()
    assert row == (2, 90, timedelta(seconds=10), timedelta(minutes=1))

    job_id = client.enqueue("configured", {})
    assert client.get_job(job_id).max_attempts == 2
    leased = client.lease("configured", "w")
    assert timedelta(seconds=85) < leased.lease_expires_at - _db_now(conn) <= timedelta(seconds=90)
    start = _db_now(conn)
    assert client.nack(job_id, leased.lease_token, "x") == "failed"
    delay = client.get_job(job_id).run_at - start
    assert timedelta(seconds=10) <= delay <= timedelta(seconds=11) + (_db_now(conn) - start)

    # A configured queue shows in stats even without jobs.
    client.configure_queue("empty-but-configured", backoff_max=timedelta(hours=2))
    assert "empty-but-configured" in {s.queue_name for s in client.stats()}


def test_stats(client, conn):
    assert client.stats() == []
    a = client.enqueue_batch("a", [{}, {}, {}, {}, {}])
    client.enqueue("a", {}, run_at=_db_now(conn) + timedelta(hours=1))
    client.enqueue("b", {})
    l1, l2, l3 = client.lease_many("a", "w", batch_size=3)
    client.ack(l1.job.id, l1.lease_token)
    client.nack(l2.job.id, l2.lease_token, "x", retry_in=timedelta(hours=1))
    client.cancel(a[3])
    stats = client.stats()
    assert all(isinstance(s, QueueStats) for s in stats)
    by_queue = {s.queue_name: s for s in stats}
    assert set(by_queue) == {"a", "b"}
    s = by_queue["a"]
    assert (s.pending, s.processing, s.failed, s.completed, s.dead, s.cancelled) == (2, 1, 1, 1, 0, 1)
    assert s.oldest_due_at == client.get_job(a[4]).run_at
    assert isinstance(s.oldest_due_at, datetime)
    assert by_queue["b"].pending == 1
    # l3 still processing
    assert client.get_job(l3.job.id).status is JobState.PROCESSING


def test_purge(client, conn):
    done = client.enqueue("p", {"n": 1})
    cancelled = client.enqueue("p", {"n": 2})
    dead = client.enqueue("p", {"n": 3})
    pending = client.enqueue("p", {"n": 4}, idempotency_key="once")
    client.ack(done, client.lease("p", "w").lease_token)
    client.cancel(cancelled)
    leased = client.lease("p", "w")
    assert leased.job.id == dead
    client.nack(dead, leased.lease_token, retry=False)

    assert client.purge(timedelta(hours=1)) == 0  # all finished just now
    conn.execute("update openqueue.finished_jobs set finished_at = now() - interval '2 hours'")
    removed = client.purge(older_than=timedelta(hours=1))
    assert type(removed) is int and removed == 2
    assert client.get_job(done) is None and client.get_job(cancelled) is None
    assert client.get_job(dead).status is JobState.DEAD
    assert client.purge(timedelta(hours=1), include_dead=True) == 1
    assert client.get_job(dead) is None
    assert client.get_job(pending).status is JobState.PENDING


def test_next_run_at(client, conn):
    assert client.next_run_at(["n1", "n2"]) is None
    client.enqueue("n1", {})  # due now: not a future run_at
    later = _db_now(conn) + timedelta(minutes=3)
    client.enqueue("n2", {}, run_at=later)
    client.enqueue("n2", {}, run_at=later + timedelta(minutes=1))
    assert client.next_run_at(["n1", "n2"]) == later
    assert client.next_run_at(["n1"]) is None


def test_client_install_is_a_no_op_on_an_installed_database(client):
    job_id = client.enqueue("i", {})
    client.install()
    assert client.get_job(job_id).status is JobState.PENDING


# -- enqueue(conn=...) joins the caller's transaction ------------------------------------


def _drain(listener: psycopg.Connection, seconds: float) -> list[psycopg.Notify]:
    return list(listener.notifies(timeout=seconds))


def test_enqueue_with_conn_commits_atomically_with_the_callers_writes(client, conn, dsn):
    conn.execute("create table public.orders (id integer primary key, job_id bigint)")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN openqueue")

        with psycopg.connect(dsn) as c:
            with c.transaction():
                c.execute("insert into public.orders (id) values (1)")
                job_id = client.enqueue("orders", {"order": 1}, conn=c)
                # Not visible to anyone else before commit.
                assert client.get_job(job_id) is None
                assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0
                raise psycopg.Rollback
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

            # Rolled back: neither the order, nor the job, nor a notification.
            assert conn.execute("select count(*) from public.orders").fetchone()[0] == 0
            assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0
            assert client.get_job(job_id) is None
            assert _drain(listener, 0.5) == []

            with c.transaction():
                job_id = client.enqueue("orders", {"order": 2}, conn=c)
                c.execute("insert into public.orders values (2, %s)", (job_id,))
                assert _drain(listener, 0.2) == []  # nothing before commit

        notes = list(listener.notifies(timeout=5.0, stop_after=1))
        notes += _drain(listener, 0.3)
        assert [(n.channel, n.payload) for n in notes] == [("openqueue", "orders")]
    assert conn.execute("select id, job_id from public.orders").fetchall() == [(2, job_id)]
    assert client.get_job(job_id).payload == {"order": 2}


def test_enqueue_with_conn_rolled_back_by_an_error(client, conn, dsn):
    conn.execute("create table public.orders (id integer primary key)")
    with psycopg.connect(dsn) as c, pytest.raises(RuntimeError), c.transaction():
        c.execute("insert into public.orders values (1)")
        client.enqueue("orders", {}, conn=c)
        client.enqueue_batch("orders", [{}, {}], conn=c)
        raise RuntimeError("application failure")
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0
    assert conn.execute("select count(*) from public.orders").fetchone()[0] == 0


# -- bad arguments -----------------------------------------------------------------


def _idle_connection(dsn: str) -> psycopg.Connection:
    """A non-autocommit connection: any statement sent would open a transaction."""
    return psycopg.connect(dsn)


BAD_CALLS = {
    "payload not JSON-able": lambda c, conn: c.enqueue("q", {"x": object()}, conn=conn),
    "payload with a set": lambda c, conn: c.enqueue("q", {1, 2}, conn=conn),
    "payloads not JSON-able": lambda c, conn: c.enqueue_batch("q", [{}, {"x": object()}], conn=conn),
    "payloads not a list": lambda c, conn: c.enqueue_batch("q", {"a": 1}, conn=conn),
    "payloads None": lambda c, conn: c.enqueue_batch("q", None, conn=conn),
    "payloads a str": lambda c, conn: c.enqueue_batch("q", "[]", conn=conn),
    "result not JSON-able": lambda c, conn: c.ack(1, uuid.uuid4(), result=object(), conn=conn),
    "naive run_at": lambda c, conn: c.enqueue("q", {}, run_at=datetime(2030, 1, 1), conn=conn),
    "naive run_at in batch": lambda c, conn: c.enqueue_batch("q", [{}], run_at=datetime.now(), conn=conn),
    "run_at not a datetime": lambda c, conn: c.enqueue("q", {}, run_at="2030-01-01", conn=conn),
    "retry_in an int": lambda c, conn: c.nack(1, uuid.uuid4(), retry_in=5, conn=conn),
    "retry_in a float": lambda c, conn: c.nack(1, uuid.uuid4(), retry_in=1.5, conn=conn),
    "backoff_base not a timedelta": lambda c, conn: c.configure_queue("q", backoff_base=3, conn=conn),
    "older_than not a timedelta": lambda c, conn: c.purge(3600, conn=conn),
    "queue_name None (enqueue)": lambda c, conn: c.enqueue(None, {}, conn=conn),
    "queue_name None (batch)": lambda c, conn: c.enqueue_batch(None, [{}], conn=conn),
    "queue_name None (lease)": lambda c, conn: c.lease(None, "w", conn=conn),
    "queue_name None (configure)": lambda c, conn: c.configure_queue(None, conn=conn),
    "payload None": lambda c, conn: c.enqueue("q", None, conn=conn),
    "lease_token not a UUID": lambda c, conn: c.ack(1, "not-a-uuid", conn=conn),
    "ack_many result not JSON-able": lambda c, conn: c.ack_many([1], [uuid.uuid4()], [object()], conn=conn),
    "ack_many token not a UUID": lambda c, conn: c.ack_many([1], ["nope"], conn=conn),
    "ack_many job_ids None": lambda c, conn: c.ack_many(None, [uuid.uuid4()], conn=conn),
    "ack_many lease_tokens None": lambda c, conn: c.ack_many([1], None, conn=conn),
    "ack_many job_ids a str": lambda c, conn: c.ack_many("1", [uuid.uuid4()], conn=conn),
    "ack_many job id a str": lambda c, conn: c.ack_many(["1"], [uuid.uuid4()], conn=conn),
    "ack_many results a dict": lambda c, conn: c.ack_many([1], [uuid.uuid4()], {"a": 1}, conn=conn),
    "priority a str": lambda c, conn: c.enqueue("q", {}, priority="high", conn=conn),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_raise_invalid_argument_before_sql(client, dsn, call):
    with _idle_connection(dsn) as c:
        with pytest.raises(InvalidArgument) as info:
            call(client, c)
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, OpenQueueError)
        # Nothing was sent: the connection never left IDLE.
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # And through the client's own pool too.
    with pytest.raises(InvalidArgument):
        call(client, None)


def test_naive_datetime_is_refused_even_on_a_dead_connection(dsn):
    closed = psycopg.connect(dsn, autocommit=True)
    closed.close()
    client = Client(closed)
    with pytest.raises(InvalidArgument, match="run_at"):
        client.enqueue("q", {}, run_at=datetime(2030, 1, 1))
    with pytest.raises(InvalidArgument, match="retry_in"):
        client.nack(1, uuid.uuid4(), retry_in=10)
    with pytest.raises(InvalidArgument, match="queue_name"):
        client.enqueue(None, {})
    with pytest.raises(InvalidArgument, match="payload"):
        client.enqueue("q", {"x": object()})


def test_sql_errors_come_unchanged(client, conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        client.enqueue("", {})
    assert info.value.sqlstate == "22023"
    assert "queue_name" in str(info.value)
    assert not isinstance(info.value, OpenQueueError)

    cases = [
        lambda: client.enqueue("bad name!", {}),
        lambda: client.enqueue("x" * 129, {}),
        lambda: client.enqueue("q", {}, max_attempts=0),
        lambda: client.lease_many("q", "w", batch_size=0),
        lambda: client.lease_many("q", "w", batch_size=10_001),
        lambda: client.lease("q", "w", lease_seconds=86_401),
        lambda: client.heartbeat(1, uuid.uuid4(), lease_seconds=0),
        lambda: client.configure_queue("q", lease_seconds=0),
        lambda: client.nack(1, uuid.uuid4(), retry_in=timedelta(seconds=-1)),
        lambda: client.purge(timedelta(seconds=-1)),
    ]
    for case in cases:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
            case()
        assert info.value.sqlstate == "22023"
    # Limits are inclusive.
    client.enqueue("x" * 128, {})
    client.lease_many("q", "w", lease_seconds=86_400, batch_size=10_000)
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 1


# -- where connections come from ---------------------------------------------------------


def _backends(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
        # clients only: on Citus the coordinator also holds Citus's own sessions (maintenance daemon,
        # connections to itself), named citus_*
        " and backend_type = 'client backend' and application_name not like 'citus%'"
    ).fetchone()[0]


def _wait_for_backends(conn: psycopg.Connection, expected: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = _backends(conn)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def test_client_from_a_dsn_closes_its_pool(dsn, conn):
    assert _backends(conn) == 0
    client = Client(dsn, min_size=2, max_size=3)
    assert _backends(conn) == 0  # the pool opens lazily, on first use
    with client:
        job_id = client.enqueue("src", {})
        assert client.get_job(job_id) is not None
        assert 1 <= _backends(conn) <= 3  # max_size
    assert _wait_for_backends(conn, 0) == 0
    assert _status(conn, job_id) == "pending"


def test_client_from_a_pool_does_not_close_it(dsn, conn):
    with ConnectionPool(dsn, min_size=1, max_size=2, open=True) as pool:
        with Client(pool) as client:
            job_id = client.enqueue("src", {"from": "pool"})
            leased = client.lease("src", "w")
            assert client.ack(job_id, leased.lease_token) is True
        assert not pool.closed
        # Committed: visible from another session.
        assert _status(conn, job_id) == "completed"
        with pool.connection() as c:
            assert c.execute("select 1").fetchone() == (1,)


def test_client_from_a_single_connection(dsn, conn):
    with psycopg.connect(dsn, autocommit=True) as single:
        with Client(single) as client:
            ids = client.enqueue_batch("src", [{}, {}])
            # Threads share the one connection under the client's lock.
            errors: list[BaseException] = []

            def work() -> None:
                try:
                    for _ in range(10):
                        client.enqueue("src", {})
                        client.stats()
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
        assert not single.closed
        assert single.execute("select count(*) from openqueue.jobs").fetchone()[0] == 42
    assert [_status(conn, i) for i in ids] == ["pending", "pending"]


def test_client_refuses_other_sources():
    with pytest.raises(TypeError):
        Client(42)


def test_timezone_aware_run_at_in_any_zone(client):
    from zoneinfo import ZoneInfo

    run_at = datetime(2031, 6, 1, 12, 0, tzinfo=ZoneInfo("Asia/Tokyo"))
    job_id = client.enqueue("tz", {}, run_at=run_at)
    assert client.get_job(job_id).run_at == run_at
    assert client.get_job(job_id).run_at == run_at.astimezone(UTC)


def test_a_closed_client_says_so(dsn: str) -> None:
    client = Client(dsn)
    client.enqueue("closing", {})
    client.close()
    with pytest.raises(OpenQueueError, match="closed"):
        client.enqueue("closing", {})
