"""The worker runtime and flow control (CONTRACT.md sections 8 and 9).

A worker wakes when a paused queue resumes (the NOTIFY of oq_resume_queue),
and a queue held back by its limits costs it a bounded number of lease calls,
never a loop of them, while the work still goes on to the end.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from openqueue_py import Client, _sql

from .conftest import make_worker, running, status_counts, wait_until, wait_until_waiting


@pytest.fixture
def lease_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Every oq_lease call the worker makes, by queue: alone, or carried by an ack flush."""
    calls: dict[str, int] = {}
    alone, carried = _sql.lease_timed, _sql.ack_many_and_lease

    def counted(queue_name: str, *args: Any, **kwargs: Any) -> Any:
        calls[queue_name] = calls.get(queue_name, 0) + 1
        return alone(queue_name, *args, **kwargs)

    def counted_carried(*args: Any, **kwargs: Any) -> Any:
        queue_name = args[3] if len(args) > 3 else kwargs["queue_name"]
        calls[queue_name] = calls.get(queue_name, 0) + 1
        return carried(*args, **kwargs)

    monkeypatch.setattr(_sql, "lease_timed", counted)
    monkeypatch.setattr(_sql, "ack_many_and_lease", counted_carried)
    return calls


def test_a_paused_queue_wakes_its_worker_when_resumed(dsn: str, conn: psycopg.Connection) -> None:
    started: list[float] = []
    with Client(dsn) as client:
        client.pause_queue("held")
        client.enqueue("held", {})
        # poll_interval 60 s: within the wait below only a notification can wake it.
        worker = make_worker(dsn, {"held": lambda job: started.append(time.monotonic())}, poll_interval=60.0)
        with running(worker):
            wait_until_waiting(conn, worker, "the worker to find the queue paused and wait")
            time.sleep(0.5)
            assert started == []  # paused: nothing leased
            assert client.resume_queue("held") is True
            wait_until(lambda: started, timeout=30, what="the job to start after the resume")
            wait_until(lambda: status_counts(conn).get("completed") == 1, what="the ack")


def test_a_queue_at_max_running_costs_a_bounded_number_of_lease_calls(
    dsn: str, conn: psycopg.Connection, lease_calls: dict[str, int]
) -> None:
    jobs = 12
    release = threading.Event()
    lock = threading.Lock()
    running_now = [0]
    most = [0]

    def handle(job: Any) -> None:
        with lock:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
        if job.payload == 0:
            release.wait(30)
        with lock:
            running_now[0] -= 1

    with Client(dsn) as client:
        client.set_queue_limits("limited", max_running=1)
        client.enqueue_batch("limited", list(range(jobs)))
    worker = make_worker(dsn, {"limited": handle}, concurrency=4, poll_interval=60.0)
    with running(worker):
        wait_until(lambda: most[0] == 1, what="the first job to run")
        before = lease_calls.get("limited", 0)
        time.sleep(3.0)  # the first job holds the only slot of the queue
        during = lease_calls.get("limited", 0) - before
        release.set()
        wait_until(lambda: status_counts(conn).get("completed") == jobs, what="every job to complete")
    # A retry ladder from 50 ms doubling: a handful of calls in 3 s; a busy loop: thousands.
    assert during <= 30, during
    assert most[0] == 1  # never two jobs of the queue at once


def test_a_short_lease_of_a_queue_without_limits_is_not_retried(
    dsn: str, conn: psycopg.Connection, lease_calls: dict[str, int]
) -> None:
    # One job at a time, as an idle worker sees sporadic work: each lease
    # asks for 4 and gets 1. The queue has no limits, so that short lease
    # means drained; a limited queue would be retried after 50, 100, 200,
    # 400 and 800 ms (the ladder) within the 1.6 s watched below.
    with Client(dsn) as client:
        worker = make_worker(dsn, {"plain": lambda job: None}, concurrency=4, poll_interval=60.0)
        with running(worker):
            wait_until_waiting(conn, worker, "the worker to start waiting (its start-up leases done)")
            for n in range(1, 4):
                client.enqueue("plain", {"n": n})
                wait_until(lambda n=n: status_counts(conn).get("completed") == n, what=f"job {n} to complete")
                before = lease_calls.get("plain", 0)
                time.sleep(1.6)
                assert lease_calls.get("plain", 0) == before, f"job {n}: {lease_calls}"


def test_limits_set_while_a_worker_runs_are_learnt_at_its_next_poll(
    dsn: str, conn: psycopg.Connection, lease_calls: dict[str, int]
) -> None:
    release = threading.Event()

    def handle(job: Any) -> None:
        if job.payload == 0:
            release.wait(30)

    with Client(dsn) as client:
        worker = make_worker(dsn, {"late": handle}, concurrency=4, poll_interval=1.0)
        with running(worker):
            wait_until_waiting(conn, worker, "the worker to start (it has asked which queues are limited)")
            client.set_queue_limits("late", max_running=1)
            time.sleep(2.2)  # two polls: the worker now knows the queue is limited
            before = lease_calls.get("late", 0)
            client.enqueue_batch("late", [0, 1, 2])
            time.sleep(1.5)
            during = lease_calls.get("late", 0) - before
            assert status_counts(conn).get("processing") == 1  # job 0, holding max_running
            # The notification's lease brings job 0 and no more (max_running),
            # with job 0 held here: the ladder retries after 50, 100, 200 and
            # 400 ms, 5 calls within 0.8 s, plus the polls (6 in 1.5 s here).
            # A worker that still took the queue for unlimited makes 1 call,
            # plus one per poll (2 here).
            assert during >= 5, lease_calls
            release.set()
            wait_until(lambda: status_counts(conn).get("completed") == 3, what="every job to complete")


def test_a_rate_limited_queue_drains_without_a_loop(
    dsn: str, conn: psycopg.Connection, lease_calls: dict[str, int]
) -> None:
    jobs = 30
    with Client(dsn) as client:
        client.set_queue_limits("paced", rate_limit=10, rate_period=timedelta(seconds=1))
        client.enqueue_batch("paced", list(range(jobs)))
    worker = make_worker(dsn, {"paced": lambda job: None}, concurrency=8, poll_interval=60.0)
    with running(worker):
        wait_until(lambda: status_counts(conn).get("completed") == jobs, what="every job to complete")
    # 30 jobs at 10 a second: about 2 s of waiting for tokens; each call asks
    # for what is free, so a loop would show as hundreds of calls.
    assert lease_calls["paced"] <= 100, lease_calls
