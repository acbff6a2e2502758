"""Workers fire recurring schedules (contract sections 7 and 9: ``tick_interval``).

Two workers tick a short ``tick_interval`` side by side; time is moved by
setting a schedule's next_run_at as the owner, so no test waits for a real
minute. ``examples/schedule_two_workers.py`` is the same in real time.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from openqueue_py.errors import WorkerError

from .conftest import make_worker, running, wait_until


class Recorder:
    """A handler that records the id of every job it runs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ran: list[int] = []

    def __call__(self, job) -> None:
        with self.lock:
            self.ran.append(job.id)


def set_next_run_at(conn: psycopg.Connection, name: str, when: datetime) -> None:
    """Move the schedule back in time, as the owner: due at ``when``, last fired before it."""
    conn.execute(
        "update openqueue.cron_schedules"
        " set next_run_at = %(when)s, last_run_at = case when last_run_at < %(when)s then last_run_at end"
        " where schedule_name = %(name)s",
        {"when": when, "name": name},
    )


def scheduled_jobs(conn: psycopg.Connection) -> list[tuple[int, datetime, str, str]]:
    return conn.execute(
        "select id, run_at, idempotency_key, status from openqueue.jobs"
        " where idempotency_key like 'schedule:%' order by run_at, id"
    ).fetchall()


def test_two_workers_enqueue_and_run_one_job_per_minute_slot(dsn, conn):
    recorder = Recorder()
    conn.execute("select openqueue.oq_schedule('every-minute', '* * * * *', 'minutely', '{\"n\": 1}')")
    workers = [make_worker(dsn, {"minutely": recorder}, tick_interval=0.02) for _ in range(2)]
    with running(workers[0]), running(workers[1]):
        for _ in range(5):
            # The schedule was last due five minutes ago: one job for the latest
            # slot (this minute), not a burst of five, and only one of the two
            # workers enqueues it.
            now = conn.execute("select now()").fetchone()[0]
            set_next_run_at(conn, "every-minute", now - timedelta(minutes=5))
            wait_until(
                lambda: conn.execute(
                    "select next_run_at > now() from openqueue.schedules where schedule_name = 'every-minute'"
                ).fetchone()[0],
                what="a worker to tick",
            )
            wait_until(
                lambda: all(j[3] == "completed" for j in scheduled_jobs(conn)), what="the jobs to complete"
            )
    found = scheduled_jobs(conn)
    slots = [j[1] for j in found]
    # One job per minute slot: this test may straddle a minute boundary or two.
    assert len(set(slots)) == len(slots) and 1 <= len(slots) <= 3
    assert all(s.second == 0 and s.microsecond == 0 for s in slots)
    assert [j[2] for j in found] == [f"schedule:every-minute:{int(s.timestamp())}" for s in slots]
    # and every job ran exactly once, across the two workers
    assert sorted(recorder.ran) == sorted(j[0] for j in found)


def test_two_workers_fire_each_of_several_slots_exactly_once(dsn, conn):
    """Five "minutes" in a row: each slot is enqueued once and run once, with two workers ticking."""
    recorder = Recorder()
    base = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=30)
    workers = [make_worker(dsn, {"minutely": recorder}, tick_interval=0.02) for _ in range(2)]
    with running(workers[0]), running(workers[1]):
        for k in range(5):
            slot = base + timedelta(minutes=k)
            # A schedule whose latest slot before now is exactly `slot` (it recurs
            # yearly), moved so that it is due: the workers must fire it once.
            cron = f"{slot.minute} {slot.hour} {slot.day} {slot.month} *"
            with conn.transaction():
                conn.execute("select openqueue.oq_schedule('walker', %s, 'minutely')", (cron,))
                set_next_run_at(conn, "walker", slot)
            wait_until(
                lambda slot=slot: conn.execute(
                    "select last_run_at = %s from openqueue.schedules where schedule_name = 'walker'", (slot,)
                ).fetchone()[0],
                what=f"slot {slot} to fire",
            )
            wait_until(lambda k=k: len(recorder.ran) == k + 1, what=f"job {k + 1} to run")
    found = scheduled_jobs(conn)
    assert [j[1] for j in found] == [base + timedelta(minutes=k) for k in range(5)]
    assert [j[2] for j in found] == [
        f"schedule:walker:{int((base + timedelta(minutes=k)).timestamp())}" for k in range(5)
    ]
    assert sorted(recorder.ran) == sorted(j[0] for j in found)


def test_the_ticking_worker_logs_what_it_enqueued(dsn, conn, events):
    recorder = Recorder()
    conn.execute("select openqueue.oq_schedule('logged', '* * * * *', 'minutely')")
    now = conn.execute("select now()").fetchone()[0]
    set_next_run_at(conn, "logged", now - timedelta(minutes=1))
    worker = make_worker(dsn, {"minutely": recorder}, tick_interval=0.02)
    with running(worker):
        wait_until(lambda: events.named("worker.ticked", count=1), what="worker.ticked")
        wait_until(lambda: len(recorder.ran) == 1, what="the job to run")


def test_tick_interval_zero_turns_ticking_off(dsn, conn):
    recorder = Recorder()
    conn.execute("select openqueue.oq_schedule('off', '* * * * *', 'minutely')")
    now = conn.execute("select now()").fetchone()[0]
    set_next_run_at(conn, "off", now - timedelta(minutes=1))
    worker = make_worker(dsn, {"minutely": recorder}, tick_interval=0, reap_interval=0.02)
    with running(worker):
        # The worker is up and serving the queue (it runs a plain job), and has
        # had many reap rounds' worth of time to tick if it were going to.
        conn.execute("select openqueue.oq_enqueue('minutely', '{}')")
        wait_until(lambda: len(recorder.ran) == 1, what="the plain job to run")
        threading.Event().wait(1.0)
    assert scheduled_jobs(conn) == []
    assert conn.execute("select last_run_at from openqueue.schedules").fetchone()[0] is None


@pytest.mark.parametrize("value", [-1, -0.5, "1", None, True])
def test_bad_tick_interval_is_refused(dsn, value):
    with pytest.raises(WorkerError, match="tick_interval"):
        make_worker(dsn, {"q": lambda job: None}, tick_interval=value)
