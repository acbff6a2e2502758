"""NOTIFY openqueue (CONTRACT.md section 3).

The listener is a separate session (on Citus one per node: a routed call
notifies on the worker node that ran it, contract section 10). Instead of
waiting a while to see that something did *not* arrive, a check sends a
sentinel notification after the action: notifications are delivered in
commit order, so everything the action sent has arrived once the sentinel
has (on each node).
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from . import helpers
from .helpers import (
    db_now,
    enqueue,
    enqueue_batch,
    expire_lease,
    lease,
    lease_one,
    make_job,
    reap,
    replay,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


@pytest.fixture
def listener(dsn):
    """LISTEN openqueue on the server, and on Citus on every node (contract section 10)."""
    node_listener = helpers.NodeListener(dsn, "openqueue")
    try:
        yield node_listener
    finally:
        node_listener.close()


def received(listener, conn) -> list[tuple[str, str]]:
    """(channel, payload) of every notification delivered so far, up to a fresh sentinel on each node."""
    return listener.received()


def test_enqueue_of_a_due_job_notifies_its_queue(conn, listener):
    enqueue(conn, "emails")
    assert received(listener, conn) == [("openqueue", "emails")]


def test_enqueue_with_run_at_in_the_past_notifies(conn, listener):
    enqueue(conn, "emails", run_at=db_now(conn) - timedelta(hours=1))
    assert received(listener, conn) == [("openqueue", "emails")]


def test_notification_arrives_without_polling(conn, listener):
    enqueue(conn, "wakeup")
    (n,) = listener.notifies(timeout=5, stop_after=1)
    assert (n.channel, n.payload) == ("openqueue", "wakeup")


def test_enqueue_of_a_future_job_does_not_notify(conn, listener):
    enqueue(conn, "later", run_at=db_now(conn) + timedelta(minutes=5))
    enqueue_batch(conn, "later", [{}, {}], run_at=db_now(conn) + timedelta(minutes=5))
    assert received(listener, conn) == []


def test_nothing_is_notified_before_commit(dsn, conn, listener):
    with psycopg.connect(dsn) as writer:
        enqueue(writer, "emails")
        assert received(listener, conn) == []
        writer.commit()
    assert received(listener, conn) == [("openqueue", "emails")]


def test_nothing_is_notified_after_rollback(dsn, conn, listener):
    with psycopg.connect(dsn) as writer:
        enqueue(writer, "emails")
        enqueue_batch(writer, "emails", [{}])
        writer.rollback()
    assert received(listener, conn) == []


def test_a_batch_sends_exactly_one_notification(conn, listener):
    enqueue_batch(conn, "bulk", [{"n": i} for i in range(25)])
    assert received(listener, conn) == [("openqueue", "bulk")]


def test_an_empty_batch_sends_nothing(conn, listener):
    enqueue_batch(conn, "bulk", [])
    assert received(listener, conn) == []


def test_reap_notifies_each_refilled_queue_once(conn, listener):
    ids = [enqueue(conn, "a"), enqueue(conn, "a"), enqueue(conn, "b")]
    enqueue(conn, "c")  # leased but not expired: c is not refilled
    lease(conn, "a", batch_size=2)
    lease(conn, "b")
    lease(conn, "c")
    for job_id in ids:
        expire_lease(conn, job_id)
    received(listener, conn)  # drop the enqueue notifications

    assert reap(conn) == 3
    got = received(listener, conn)
    assert sorted(got) == [("openqueue", "a"), ("openqueue", "b")]


def test_reap_that_reclaims_nothing_does_not_notify(conn, listener):
    enqueue(conn, "a")
    lease_one(conn, "a")
    received(listener, conn)
    assert reap(conn) == 0
    assert received(listener, conn) == []


@pytest.mark.parametrize("state", ["dead", "cancelled"])
def test_replay_notifies_the_queue(conn, listener, state):
    job_id, _ = make_job(conn, state, "replayed")
    received(listener, conn)
    assert replay(conn, job_id) is True
    assert received(listener, conn) == [("openqueue", "replayed")]
