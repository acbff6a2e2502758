"""NOTIFY economy (issue 6): one notification per queue per transaction; opt-in 'when_waiting' queues."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from . import helpers
from .helpers import Background, db_now, enqueue, enqueue_batch, lease, reap, wait_until_blocked
from .test_notify import received

module_database = helpers.module_database
dsn = helpers.fresh_dsn


@pytest.fixture
def listener(dsn):
    """LISTEN on the server, and on Citus on every node (contract section 10)."""
    node_listener = helpers.NodeListener(dsn, "openqueue", "openqueue_scheduled")
    try:
        yield node_listener
    finally:
        node_listener.close()


def set_notify(conn, queue_name: str, mode: str) -> None:
    conn.execute("select openqueue.oq_set_queue_notify(%s, %s)", [queue_name, mode])


def wait(conn, queues: list[str], worker_id: str = "w1", seconds: int = 60) -> None:
    conn.execute("select openqueue.oq_wait(%s::text[], %s, %s)", [queues, worker_id, seconds])


# --- at most one notification per queue per transaction ---------------------------------


def test_one_notification_per_queue_per_transaction(conn, listener):
    with conn.transaction():
        for n in range(100):
            enqueue(conn, "emails", {"n": n})
        enqueue_batch(conn, "emails", [{}, {}])
        for n in range(3):
            enqueue(conn, "sms", {"n": n})
    assert sorted(received(listener, conn)) == [("openqueue", "emails"), ("openqueue", "sms")]


# --- when_waiting --------------------------------------------------------------------------


def test_default_mode_is_always(conn, listener):
    enqueue(conn, "q")
    assert received(listener, conn) == [("openqueue", "q")]
    assert conn.execute("select notify_mode from openqueue.queues").fetchall() == []
    set_notify(conn, "q", "when_waiting")
    set_notify(conn, "q", "always")
    enqueue(conn, "q")
    assert received(listener, conn) == [("openqueue", "q")]


def test_when_waiting_notifies_only_while_a_worker_waits(conn, listener):
    set_notify(conn, "q", "when_waiting")
    enqueue(conn, "q")
    enqueue_batch(conn, "q", [{}, {}])
    enqueue(conn, "q", run_at=db_now(conn) + timedelta(hours=1))
    assert received(listener, conn) == []

    wait(conn, ["q", "other"], seconds=60)
    enqueue(conn, "q")
    enqueue(conn, "q", run_at=db_now(conn) + timedelta(hours=1))
    assert received(listener, conn) == [("openqueue", "q"), ("openqueue_scheduled", "q")]
    enqueue_batch(conn, "q", [{}])
    assert received(listener, conn) == [("openqueue", "q")]

    # Expired registrations count for nothing, and oq_reap removes them.
    conn.execute("update openqueue.queue_waiters set wait_until = now() - interval '1 second'")
    enqueue(conn, "q")
    assert received(listener, conn) == []
    reap(conn)
    assert conn.execute("select count(*) from openqueue.queue_waiters").fetchone() == (0,)
    # Queues left on 'always' are not affected by any of this.
    enqueue(conn, "loud")
    assert received(listener, conn) == [("openqueue", "loud")]


def test_wait_renews_and_cleans_registrations(conn):
    wait(conn, ["a", "b", "a"], "w1", seconds=10)
    wait(conn, ["a"], "w1", seconds=100)
    rows = conn.execute(
        "select queue_name, worker_id, round(extract(epoch from wait_until - now())) "
        "from openqueue.queue_waiters order by 1"
    ).fetchall()
    assert [r[:2] for r in rows] == [("a", "w1"), ("b", "w1")]
    assert 95 <= rows[0][2] <= 100
    conn.execute(
        "update openqueue.queue_waiters set wait_until = now() - interval '1 second' where queue_name = 'b'"
    )
    wait(conn, ["c"], "w2")
    assert [r[0] for r in conn.execute("select queue_name from openqueue.queue_waiters order by 1")] == [
        "a",
        "c",
    ]


def test_no_lost_wakeup_when_the_producer_is_first(dsn, conn, listener):
    """Producer inserted but not committed; the waiter's oq_wait waits for its commit, then leases it."""
    set_notify(conn, "q", "when_waiting")
    with psycopg.connect(dsn) as producer, psycopg.connect(dsn, autocommit=True) as waiter:
        job_id = enqueue(producer, "q")  # transaction left open: holds the shared lock
        assert lease(waiter, "q") == []  # the worker found nothing...
        registering = Background(lambda: wait(waiter, ["q"]))
        registering.start()
        wait_until_blocked(conn, waiter.info.backend_pid)  # ...and its registration waits for the producer
        producer.commit()
        registering.result()
        assert [r["id"] for r in lease(waiter, "q")] == [job_id]  # the protocol's lease after oq_wait
    assert received(listener, conn) == []  # nobody was registered when the producer looked


def test_no_lost_wakeup_when_the_waiter_is_first(dsn, conn, listener):
    """Waiter registering (not committed yet); the producer waits for it, then sees it and notifies."""
    set_notify(conn, "q", "when_waiting")
    with psycopg.connect(dsn) as waiter, psycopg.connect(dsn, autocommit=True) as producer:
        wait(waiter, ["q"])  # transaction left open: holds the exclusive lock
        producing = Background(lambda: enqueue(producer, "q"))
        producing.start()
        wait_until_blocked(conn, producer.info.backend_pid)
        waiter.commit()
        job_id = producing.result()
    assert received(listener, conn) == [("openqueue", "q")]
    assert [r["id"] for r in lease(conn, "q")] == [job_id]


def test_a_repeatable_read_producer_always_notifies(dsn, conn, listener):
    set_notify(conn, "q", "when_waiting")
    with psycopg.connect(dsn) as producer:
        producer.execute("set transaction isolation level repeatable read")
        enqueue(producer, "q")
        producer.commit()
    assert received(listener, conn) == [("openqueue", "q")]


@pytest.mark.parametrize(
    ("sql", "sqlstate", "argument"),
    [
        ("select openqueue.oq_set_queue_notify(NULL, 'always')", "22004", "queue_name"),
        ("select openqueue.oq_set_queue_notify('bad name', 'always')", "22023", "queue_name"),
        ("select openqueue.oq_set_queue_notify('q', NULL)", "22004", "mode"),
        ("select openqueue.oq_set_queue_notify('q', 'sometimes')", "22023", "mode"),
        ("select openqueue.oq_wait(NULL, 'w')", "22004", "queue_names"),
        ("select openqueue.oq_wait('{ok,\"bad name\"}', 'w')", "22023", "queue_names"),
        ("select openqueue.oq_wait('{ok,NULL}', 'w')", "22004", "queue_names"),
        ("select openqueue.oq_wait('{q}', NULL)", "22004", "worker_id"),
        ("select openqueue.oq_wait('{q}', '')", "22023", "worker_id"),
        ("select openqueue.oq_wait('{q}', 'w', NULL)", "22004", "seconds"),
        ("select openqueue.oq_wait('{q}', 'w', 0)", "22023", "seconds"),
        ("select openqueue.oq_wait('{q}', 'w', 86401)", "22023", "seconds"),
    ],
)
def test_bad_input(conn, sql, sqlstate, argument):
    wait(conn, ["q"], "w0")
    before = conn.execute("select to_jsonb(w) from openqueue.queue_waiters as w").fetchall()
    with pytest.raises(psycopg.Error) as excinfo:
        conn.execute(sql)
    assert excinfo.value.sqlstate == sqlstate
    assert argument in excinfo.value.diag.message_primary
    assert conn.execute("select to_jsonb(w) from openqueue.queue_waiters as w").fetchall() == before
    assert conn.execute("select count(*) from openqueue.queues").fetchone() == (0,)
