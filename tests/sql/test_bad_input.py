"""Bad input (CONTRACT.md section 4).

Every bad argument raises SQLSTATE 22023 (invalid_parameter_value) or 22004
(null_value_not_allowed) with a message that names the argument, and writes
nothing. The limits are inclusive. An unknown job id or a wrong token is not an
error.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from . import helpers
from .helpers import (
    ack,
    cancel,
    configure,
    db_now,
    enqueue,
    enqueue_batch,
    heartbeat,
    job,
    job_count,
    lease,
    lease_one,
    nack,
    replay,
    snapshot,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn

NULL = "22004"
INVALID = "22023"

# Every function that takes a queue name, called with the name as %(v)s and
# everything else valid.
QUEUE_NAME_CALLS = {
    "oq_enqueue": "select openqueue.oq_enqueue(queue_name => %(v)s::text, payload => '{}'::jsonb)",
    "oq_enqueue_batch": (
        "select * from openqueue.oq_enqueue_batch(queue_name => %(v)s::text, payloads => '[{}, {}]'::jsonb)"
    ),
    "oq_lease": "select * from openqueue.oq_lease(queue_name => %(v)s::text, worker_id => 'w')",
    "oq_configure_queue": (
        "select openqueue.oq_configure_queue(queue_name => %(v)s::text, max_attempts => 3,"
        " lease_seconds => 9)"
    ),
}

BAD_QUEUE_NAMES = [
    pytest.param(None, NULL, id="null"),
    pytest.param("", INVALID, id="empty"),
    pytest.param("a" * 129, INVALID, id="129-chars"),
    pytest.param("é" * 129, INVALID, id="129-multibyte-chars"),
    pytest.param("a b", INVALID, id="space"),
    pytest.param("é", INVALID, id="non-ascii-letter"),
    pytest.param("emails/eu", INVALID, id="slash"),
    pytest.param("it's", INVALID, id="quote"),
    pytest.param("q;drop", INVALID, id="semicolon"),
    pytest.param("q\n", INVALID, id="trailing-newline"),
    pytest.param("\tq", INVALID, id="leading-tab"),
    pytest.param("q*", INVALID, id="star"),
]

# (call, params, sqlstate, argument the message must name). %(job)s is the id of a
# job that the lease %(token)s holds, in queue 'held'.
BAD_ARGUMENTS = [
    # oq_enqueue
    ("select openqueue.oq_enqueue(queue_name => 'q', payload => NULL)", NULL, "payload"),
    (
        "select openqueue.oq_enqueue(queue_name => 'q', payload => '{}', max_attempts => 0)",
        INVALID,
        "max_attempts",
    ),
    (
        "select openqueue.oq_enqueue(queue_name => 'q', payload => '{}', max_attempts => -1)",
        INVALID,
        "max_attempts",
    ),
    (
        "select openqueue.oq_enqueue(queue_name => 'q', payload => '{}', max_attempts => 0,"
        " idempotency_key => 'k')",
        INVALID,
        "max_attempts",
    ),
    # oq_enqueue_batch
    ("select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => NULL)", NULL, "payloads"),
    ("select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '{}')", INVALID, "payloads"),
    (
        "select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '{\"a\": [1]}')",
        INVALID,
        "payloads",
    ),
    (
        "select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '\"[]\"')",
        INVALID,
        "payloads",
    ),
    ("select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '3')", INVALID, "payloads"),
    ("select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => 'true')", INVALID, "payloads"),
    ("select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => 'null')", INVALID, "payloads"),
    (
        "select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '[{}]', max_attempts => 0)",
        INVALID,
        "max_attempts",
    ),
    (
        "select * from openqueue.oq_enqueue_batch(queue_name => 'q', payloads => '[{}]', max_attempts => -4)",
        INVALID,
        "max_attempts",
    ),
    # oq_lease
    ("select * from openqueue.oq_lease(queue_name => 'q', worker_id => NULL)", NULL, "worker_id"),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', lease_seconds => 0)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', lease_seconds => -1)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', lease_seconds => 86401)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', batch_size => 0)",
        INVALID,
        "batch_size",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', batch_size => -1)",
        INVALID,
        "batch_size",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', batch_size => 10001)",
        INVALID,
        "batch_size",
    ),
    (
        "select * from openqueue.oq_lease(queue_name => 'q', worker_id => 'w', batch_size => NULL)",
        NULL,
        "batch_size",
    ),
    # oq_heartbeat
    (
        "select openqueue.oq_heartbeat(job_id => %(job)s, lease_token => %(token)s, lease_seconds => 0)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select openqueue.oq_heartbeat(job_id => %(job)s, lease_token => %(token)s, lease_seconds => -5)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select openqueue.oq_heartbeat(job_id => %(job)s, lease_token => %(token)s, lease_seconds => 86401)",
        INVALID,
        "lease_seconds",
    ),
    ("select openqueue.oq_heartbeat(job_id => NULL, lease_token => %(token)s)", NULL, "job_id"),
    ("select openqueue.oq_heartbeat(job_id => %(job)s, lease_token => NULL)", NULL, "lease_token"),
    # oq_ack / oq_nack
    ("select openqueue.oq_ack(job_id => NULL, lease_token => %(token)s)", NULL, "job_id"),
    ("select openqueue.oq_ack(job_id => %(job)s, lease_token => NULL)", NULL, "lease_token"),
    ("select openqueue.oq_nack(job_id => NULL, lease_token => %(token)s)", NULL, "job_id"),
    ("select openqueue.oq_nack(job_id => %(job)s, lease_token => NULL)", NULL, "lease_token"),
    (
        "select openqueue.oq_nack(job_id => %(job)s, lease_token => %(token)s,"
        " retry_in => interval '-1 second')",
        INVALID,
        "retry_in",
    ),
    # oq_ack_many
    (
        "select * from openqueue.oq_ack_many(job_ids => NULL, lease_tokens => array[%(token)s]::uuid[])",
        NULL,
        "job_ids",
    ),
    (
        "select * from openqueue.oq_ack_many(job_ids => array[%(job)s]::bigint[], lease_tokens => NULL)",
        NULL,
        "lease_tokens",
    ),
    (
        "select * from openqueue.oq_ack_many(job_ids => array[%(job)s, 1]::bigint[],"
        " lease_tokens => array[%(token)s]::uuid[])",
        INVALID,
        "lease_tokens",
    ),
    (
        "select * from openqueue.oq_ack_many(job_ids => array[%(job)s]::bigint[],"
        " lease_tokens => array[%(token)s]::uuid[], results => array['{}', '{}']::jsonb[])",
        INVALID,
        "results",
    ),
    (
        "select * from openqueue.oq_ack_many(job_ids => array[%(job)s, NULL]::bigint[],"
        " lease_tokens => array[%(token)s, %(token)s]::uuid[])",
        NULL,
        "job_ids",
    ),
    # oq_cancel / oq_replay
    ("select openqueue.oq_cancel(job_id => NULL)", NULL, "job_id"),
    ("select openqueue.oq_replay(job_id => NULL)", NULL, "job_id"),
    # oq_configure_queue
    ("select openqueue.oq_configure_queue(queue_name => 'cfg', max_attempts => 0)", INVALID, "max_attempts"),
    ("select openqueue.oq_configure_queue(queue_name => 'new', max_attempts => -2)", INVALID, "max_attempts"),
    (
        "select openqueue.oq_configure_queue(queue_name => 'cfg', lease_seconds => 0)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select openqueue.oq_configure_queue(queue_name => 'new', lease_seconds => 86401)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select openqueue.oq_configure_queue(queue_name => 'cfg', max_attempts => 2, lease_seconds => 86401)",
        INVALID,
        "lease_seconds",
    ),
    (
        "select openqueue.oq_configure_queue(queue_name => 'cfg', backoff_base => interval '-1 second')",
        INVALID,
        "backoff_base",
    ),
    (
        "select openqueue.oq_configure_queue(queue_name => 'cfg', backoff_max => interval '-1 second')",
        INVALID,
        "backoff_max",
    ),
    # oq_purge
    ("select openqueue.oq_purge(older_than => NULL)", NULL, "older_than"),
    (
        "select openqueue.oq_purge(older_than => interval '-1 day', include_dead => true)",
        INVALID,
        "older_than",
    ),
]


@pytest.fixture
def world(conn):
    """Something for a bad call to damage: waiting, running and finished jobs, queue settings."""
    configure(conn, "cfg", max_attempts=4, lease_seconds=60)
    configure(conn, "q", max_attempts=2)
    pending = enqueue(conn, "q", {"waiting": True}, idempotency_key="k0")
    enqueue(conn, "held")
    held = lease_one(conn, "held")
    done = enqueue(conn, "done")
    assert ack(conn, done, lease_one(conn, "done")["lease_token"]) is True
    old_done = enqueue(conn, "done")
    assert ack(conn, old_done, lease_one(conn, "done")["lease_token"]) is True
    conn.execute(
        "update openqueue.jobs set finished_at = now() - interval '30 days' where id = %s", [old_done]
    )
    dead = enqueue(conn, "done")
    assert nack(conn, dead, lease_one(conn, "done")["lease_token"], retry=False) == "dead"
    conn.execute("update openqueue.jobs set finished_at = now() - interval '30 days' where id = %s", [dead])
    return {"pending": pending, "job": held["id"], "token": held["lease_token"]}


def _assert_rejected(conn, sql, params, sqlstate, argument):
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as excinfo:
        conn.execute(sql, params).fetchall()
    error = excinfo.value
    assert error.sqlstate == sqlstate, error
    assert argument in error.diag.message_primary, error.diag.message_primary
    assert argument in str(error)
    assert snapshot(conn) == before


@pytest.mark.parametrize(("value", "sqlstate"), BAD_QUEUE_NAMES)
@pytest.mark.parametrize("function", list(QUEUE_NAME_CALLS))
def test_bad_queue_name_is_rejected(conn, world, function, value, sqlstate):
    _assert_rejected(conn, QUEUE_NAME_CALLS[function], {"v": value}, sqlstate, "queue_name")


@pytest.mark.parametrize(("sql", "sqlstate", "argument"), BAD_ARGUMENTS)
def test_bad_argument_is_rejected(conn, world, sql, sqlstate, argument):
    _assert_rejected(conn, sql, world, sqlstate, argument)


def test_rejected_enqueue_does_not_claim_its_idempotency_key(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        enqueue(conn, "q", max_attempts=0, idempotency_key="k")
    assert job_count(conn) == 0
    job_id = enqueue(conn, "q", idempotency_key="k")
    assert job(conn, job_id)["idempotency_key"] == "k"
    assert job_count(conn) == 1


def test_rejected_calls_inside_a_transaction_leave_nothing_behind(conn):
    with pytest.raises(psycopg.errors.NullValueNotAllowed), conn.transaction():
        enqueue(conn, "q")
        enqueue(conn, None)
    assert job_count(conn) == 0


# --- the inclusive limits are accepted --------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 128, "Az09_.:-", "x", "Z" * 127 + "-"])
def test_good_queue_names_are_accepted_everywhere(conn, name):
    configure(conn, name, max_attempts=3)
    job_id = enqueue(conn, name)
    (batch_id,) = enqueue_batch(conn, name, [{}])
    leased = lease(conn, name, batch_size=2)
    assert [r["id"] for r in leased] == [job_id, batch_id]
    assert job(conn, job_id)["queue_name"] == name
    assert [r["max_attempts"] for r in leased] == [3, 3]
    assert conn.execute(
        "select count(*) from openqueue.oq_stats() where queue_name = %s", [name]
    ).fetchone() == (1,)


def test_lease_seconds_limits_are_inclusive_in_oq_lease(conn):
    enqueue(conn, "q")
    enqueue(conn, "q")
    with conn.transaction():
        now = db_now(conn)
        longest = lease_one(conn, "q", lease_seconds=86400)
        shortest = lease_one(conn, "q", lease_seconds=1)
    assert longest["lease_expires_at"] == now + timedelta(days=1)
    assert shortest["lease_expires_at"] == now + timedelta(seconds=1)


def test_lease_seconds_limits_are_inclusive_in_oq_heartbeat(conn):
    enqueue(conn, "q")
    held = lease_one(conn, "q")
    with conn.transaction():
        now = db_now(conn)
        assert heartbeat(conn, held["id"], held["lease_token"], lease_seconds=86400) == now + timedelta(
            days=1
        )
        assert heartbeat(conn, held["id"], held["lease_token"], lease_seconds=1) == now + timedelta(seconds=1)


def test_limits_are_inclusive_in_oq_configure_queue(conn):
    configure(conn, "long", lease_seconds=86400, max_attempts=1)
    configure(conn, "short", lease_seconds=1)
    for queue, expected in (("long", timedelta(days=1)), ("short", timedelta(seconds=1))):
        job_id = enqueue(conn, queue)
        with conn.transaction():
            now = db_now(conn)
            assert lease_one(conn, queue)["lease_expires_at"] == now + expected
        assert job(conn, job_id)["max_attempts"] == (1 if queue == "long" else 5)


def test_batch_size_limits_are_inclusive(conn):
    ids = enqueue_batch(conn, "q", [{}] * 3)
    assert [r["id"] for r in lease(conn, "q", batch_size=1)] == ids[:1]
    assert [r["id"] for r in lease(conn, "q", batch_size=10000)] == ids[1:]


def test_max_attempts_of_one_is_accepted(conn):
    job_id = enqueue(conn, "q", max_attempts=1)
    (batch_id,) = enqueue_batch(conn, "q", [{}], max_attempts=1)
    assert job(conn, job_id)["max_attempts"] == 1
    assert job(conn, batch_id)["max_attempts"] == 1


# --- not errors -------------------------------------------------------------------------


def test_unknown_job_ids_are_not_errors(conn):
    token = uuid.uuid4()
    assert ack(conn, 987654, token) is False
    assert nack(conn, 987654, token, error="x") is None
    assert heartbeat(conn, 987654, token) is None
    assert cancel(conn, 987654) is False
    assert replay(conn, 987654) is False
    assert job_count(conn) == 0


def test_wrong_tokens_are_not_errors(conn):
    job_id = enqueue(conn, "q")
    lease_one(conn, "q")
    before = job(conn, job_id)
    wrong = uuid.uuid4()
    assert ack(conn, job_id, wrong) is False
    assert nack(conn, job_id, wrong, error="x") is None
    assert heartbeat(conn, job_id, wrong) is None
    assert job(conn, job_id) == before


def test_install_creates_no_extension(conn, pg_server):
    extensions = {r[0] for r in conn.execute("select extname from pg_extension")}
    # On the Citus backend the harness created citus (and with it citus_columnar) on every node
    # before installing OpenQueue, as a cluster's operator does (docs/scaling.md).
    before_install = {"citus", "citus_columnar"} if pg_server.kind == "citus" else set()
    assert extensions - before_install <= {"plpgsql"}
