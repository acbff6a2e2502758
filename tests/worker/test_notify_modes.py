"""A worker idle on a `when_waiting` queue is registered as waiting, so enqueues wake it."""

from __future__ import annotations

import time

import psycopg

from .conftest import make_worker, running, wait_until, wait_until_waiting


def test_an_idle_worker_registers_as_waiting_for_its_queues(dsn: str, conn: psycopg.Connection) -> None:
    worker = make_worker(dsn, {"alpha": lambda job: None, "beta": lambda job: None})
    with running(worker):
        rows = wait_until(
            lambda: conn.execute(
                "select queue_name from openqueue.queue_waiters where worker_id = %s and wait_until > now()"
                " order by queue_name",
                (worker.worker_id,),
            ).fetchall(),
            what="the worker's oq_wait registration",
        )
    assert [queue for (queue,) in rows] == ["alpha", "beta"]


def test_a_when_waiting_queue_wakes_an_idle_worker_without_polling(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute("select openqueue.oq_set_queue_notify('quiet', 'when_waiting')")
    started: list[float] = []
    worker = make_worker(dsn, {"quiet": lambda job: started.append(time.monotonic())}, poll_interval=60.0)
    with running(worker):
        wait_until_waiting(conn, worker, "the worker's oq_wait registration")
        time.sleep(0.5)  # the worker is asleep now: only a notification can wake it before 60 s
        committed = time.monotonic()
        conn.execute("select openqueue.oq_enqueue('quiet', '{}')")
        wait_until(lambda: started, timeout=20, what="the job to start")
    assert started[0] - committed < 5.0, "the job waited for a poll, not a notification"


def test_a_when_waiting_queue_with_nobody_waiting_sends_no_notification(
    dsn: str, conn: psycopg.Connection
) -> None:
    conn.execute("select openqueue.oq_set_queue_notify('quiet', 'when_waiting')")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen openqueue")
        conn.execute("select openqueue.oq_enqueue('quiet', '{}')")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
