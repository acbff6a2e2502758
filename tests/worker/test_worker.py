"""The worker runtime in-process: a real PostgreSQL, the worker in a thread."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest

from openqueue_py import AsyncWorker, Client, Fail, Job, Retry, Worker, WorkerError

from .conftest import Events, job_row, make_worker, running, status_counts, wait_until


def test_thousand_jobs_over_three_queues_each_completed_exactly_once(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    queues = ["alpha", "beta", "gamma"]
    enqueued: list[int] = []
    for index, queue in enumerate(queues):
        count = 334 if index == 0 else 333
        enqueued += client.enqueue_batch(queue, [{"n": n} for n in range(count)])
    assert len(enqueued) == 1000
    handled: list[int] = []

    def handle(job: Job) -> None:
        handled.append(job.id)

    worker = make_worker(dsn, dict.fromkeys(queues, handle), concurrency=8)
    with running(worker):
        wait_until(lambda: status_counts(conn).get("completed") == 1000, what="1000 completed jobs")
    assert Counter(handled) == Counter(enqueued)
    rows = conn.execute("select status, attempts, count(*) from openqueue.jobs group by 1, 2").fetchall()
    assert rows == [("completed", 1, 1000)]


def test_long_handler_is_kept_alive_by_heartbeats_and_runs_once(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    job_id = client.enqueue("slow", {})
    calls: list[int] = []

    def handle(job: Job) -> str:
        calls.append(job.id)
        time.sleep(3.0)
        return "done"

    # A reaper every 0.2 s and free slots: an expired lease would be re-run at once.
    worker = make_worker(dsn, {"slow": handle}, concurrency=2, lease_seconds=1, reap_interval=0.2)
    with running(worker):
        wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30, what="completion")
    row = job_row(conn, job_id)
    assert calls == [job_id]
    assert row["attempts"] == 1 and row["errors"] == [] and row["result"] == "done"
    assert len(events.named("job.heartbeat", job_id=job_id)) >= 3


def test_cancelled_job_stops_being_heartbeated_and_is_not_acked(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    job_id = client.enqueue("cancel_me", {})
    started, release = threading.Event(), threading.Event()

    def handle(job: Job) -> str:
        started.set()
        release.wait(30)
        return "too late"

    worker = make_worker(dsn, {"cancel_me": handle}, lease_seconds=1)
    try:
        with running(worker):
            assert started.wait(30)
            assert client.cancel(job_id) is True
            lost = wait_until(
                lambda: events.named("job.lease_lost", job_id=job_id), timeout=10, what="lease_lost"
            )
            beats_at_loss = len(events.named("job.heartbeat", job_id=job_id))
            # Longer than two heartbeat intervals (1/3 s): none may follow the loss.
            time.sleep(0.8)
            assert len(events.named("job.heartbeat", job_id=job_id)) == beats_at_loss
            release.set()
            wait_until(lambda: events.named("job.discarded", job_id=job_id), timeout=10, what="discarded")
    finally:
        release.set()
    assert lost[0].levelname == "WARNING"
    assert not events.named("job.completed", job_id=job_id)
    assert not events.named("job.ack_rejected", job_id=job_id)  # no ack was even tried
    row = job_row(conn, job_id)
    assert row["status"] == "cancelled" and row["result"] is None


def test_ack_of_a_job_cancelled_while_running_returns_false(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    job_id = client.enqueue("cancel_me", {})
    started, release = threading.Event(), threading.Event()

    def handle(job: Job) -> str:
        started.set()
        release.wait(30)
        return "too late"

    # A 30 s lease: the first heartbeat would come after 10 s, so the ack is what finds out.
    worker = make_worker(dsn, {"cancel_me": handle}, lease_seconds=30)
    try:
        with running(worker):
            assert started.wait(30)
            assert client.cancel(job_id) is True
            release.set()
            rejected = wait_until(lambda: events.named("job.ack_rejected", job_id=job_id), timeout=10)
    finally:
        release.set()
    assert rejected[0].outcome == "lease_lost"
    assert not events.named("job.completed", job_id=job_id)
    row = job_row(conn, job_id)
    assert row["status"] == "cancelled" and row["result"] is None


def test_scheduled_job_runs_within_half_a_second_of_its_run_at(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    run_at = conn.execute("select now() + interval '2 seconds'").fetchone()[0]
    job_id = client.enqueue("later", {}, run_at=run_at)
    ran_at: list[float] = []

    def handle(job: Job) -> None:
        ran_at.append(time.time())

    with running(make_worker(dsn, {"later": handle}, poll_interval=60)):
        wait_until(lambda: ran_at, timeout=10, what="the scheduled job")
    late = ran_at[0] - run_at.timestamp()
    assert -0.05 <= late < 0.5, f"ran {late:.3f} s after run_at"
    wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=10)


def test_job_scheduled_while_the_worker_sleeps_runs_on_time(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    """A future job added to an idle worker's queue shortens its 60 s sleep."""
    ran_at: list[float] = []

    def handle(job: Job) -> None:
        ran_at.append(time.time())

    with running(make_worker(dsn, {"later": handle}, poll_interval=60)):
        wait_until(lambda: events.named("worker.listening"), timeout=30, what="LISTEN")
        time.sleep(0.3)  # let the worker settle into its idle sleep
        run_at = conn.execute("select now() + interval '2 seconds'").fetchone()[0]
        client.enqueue("later", {}, run_at=run_at)
        wait_until(lambda: ran_at, timeout=10, what="the scheduled job")
    late = ran_at[0] - run_at.timestamp()
    assert -0.05 <= late < 0.5, f"ran {late:.3f} s after run_at"


def test_notification_wakes_the_worker_long_before_the_poll_interval(
    dsn: str, client: Client, events: Events
) -> None:
    picked: list[float] = []

    def handle(job: Job) -> None:
        picked.append(time.monotonic())

    with running(make_worker(dsn, {"wake": handle}, poll_interval=60)):
        wait_until(lambda: events.named("worker.listening"), timeout=30, what="LISTEN")
        enqueued = time.monotonic()
        client.enqueue("wake", {})
        wait_until(lambda: picked, timeout=10, what="the job")
    assert picked[0] - enqueued < 2.0


def test_return_value_is_stored_as_result(dsn: str, client: Client, conn: psycopg.Connection) -> None:
    job_id = client.enqueue("result", {"x": 2})

    def handle(job: Job) -> dict:
        return {"double": job.payload["x"] * 2, "list": [1, "two"]}

    with running(make_worker(dsn, {"result": handle})):
        wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30)
    assert job_row(conn, job_id)["result"] == {"double": 4, "list": [1, "two"]}


def test_result_that_is_not_json_is_acked_with_null_and_a_warning(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    not_json = client.enqueue("result", {"kind": "object"})
    nan = client.enqueue("result", {"kind": "nan"})

    def handle(job: Job) -> object:
        return object() if job.payload["kind"] == "object" else float("nan")

    with running(make_worker(dsn, {"result": handle})):
        wait_until(lambda: status_counts(conn).get("completed") == 2, timeout=30)
    for job_id in (not_json, nan):
        row = job_row(conn, job_id)
        assert row["status"] == "completed" and row["result"] is None
        assert events.named("job.result_not_json", job_id=job_id)[0].levelname == "WARNING"


def test_exception_type_message_and_traceback_land_in_errors(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    job_id = client.enqueue("boom", {}, max_attempts=1)

    def handle(job: Job) -> None:
        raise ValueError("the answer is not 42")

    with running(make_worker(dsn, {"boom": handle})):
        wait_until(lambda: job_row(conn, job_id)["status"] == "dead", timeout=30)
    errors = job_row(conn, job_id)["errors"]
    assert len(errors) == 1 and errors[0]["attempt"] == 1
    text = errors[0]["error"]
    assert text.startswith("ValueError: the answer is not 42")
    assert "Traceback (most recent call last)" in text and "in handle" in text


def test_exception_with_attempts_left_is_retried_after_backoff(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    client.configure_queue("flaky", backoff_base=timedelta(milliseconds=200))
    job_id = client.enqueue("flaky", {})

    def handle(job: Job) -> str:
        if job.attempts == 1:
            raise RuntimeError("first time")
        return "second time"

    # poll_interval 60: the retry is found through oq_next_run_at.
    with running(make_worker(dsn, {"flaky": handle}, poll_interval=60)):
        wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30)
    row = job_row(conn, job_id)
    assert row["attempts"] == 2 and row["result"] == "second time"
    assert row["errors"][0]["error"].startswith("RuntimeError: first time")


def test_retry_chooses_the_delay(dsn: str, client: Client, conn: psycopg.Connection) -> None:
    soon = client.enqueue("retry", {"delay": 1.0})
    later = client.enqueue("retry", {"delay": 3600})
    runs: dict[int, list[float]] = {soon: [], later: []}

    def handle(job: Job) -> str:
        runs[job.id].append(time.monotonic())
        if job.attempts == 1:
            delay = job.payload["delay"]
            raise Retry(in_=timedelta(seconds=delay) if delay > 60 else delay, message="not yet")
        return "finally"

    with running(make_worker(dsn, {"retry": handle}, poll_interval=60)):
        wait_until(lambda: job_row(conn, soon)["status"] == "completed", timeout=30)
        waiting = job_row(conn, later)
        now = conn.execute("select now()").fetchone()[0]
    assert 0.9 <= runs[soon][1] - runs[soon][0] < 2.0
    row = job_row(conn, soon)
    assert row["attempts"] == 2 and row["result"] == "finally"
    assert row["errors"][0]["error"] == "Retry: not yet"
    assert waiting["status"] == "failed" and len(runs[later]) == 1
    assert timedelta(seconds=3590) < waiting["run_at"] - now <= timedelta(seconds=3600)


def test_fail_sends_the_job_straight_to_dead(dsn: str, client: Client, conn: psycopg.Connection) -> None:
    job_id = client.enqueue("fail", {}, max_attempts=5)

    def handle(job: Job) -> None:
        raise Fail("invalid address")

    with running(make_worker(dsn, {"fail": handle})):
        wait_until(lambda: job_row(conn, job_id)["status"] == "dead", timeout=30)
    row = job_row(conn, job_id)
    assert row["attempts"] == 1
    assert [e["error"] for e in row["errors"]] == ["Fail: invalid address"]


def test_retry_and_fail_are_control_flow_not_openqueue_errors() -> None:
    from openqueue_py import OpenQueueError

    assert not issubclass(Retry, OpenQueueError) and not issubclass(Fail, OpenQueueError)
    assert Retry(in_=5).in_ == timedelta(seconds=5)
    assert Retry(in_=timedelta(minutes=1)).in_ == timedelta(minutes=1)
    assert Retry().in_ is None


def test_stop_from_another_thread_returns_at_once_and_run_returns_after_in_flight_work(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    first = client.enqueue("stop", {})
    second = client.enqueue("stop", {})
    started, release = threading.Event(), threading.Event()

    def handle(job: Job) -> str:
        started.set()
        release.wait(30)
        return "finished"

    worker = make_worker(dsn, {"stop": handle}, concurrency=1)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert started.wait(30)
        before = time.monotonic()
        worker.stop()
        assert time.monotonic() - before < 0.5
        thread.join(0.5)
        assert thread.is_alive(), "run() returned while a job was in flight"
        release.set()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        release.set()
        worker.stop(force=True)
        thread.join(30)
    # run() returned after the ack, and leased nothing more once stopped.
    assert job_row(conn, first)["status"] == "completed"
    assert job_row(conn, second)["status"] == "pending"


def test_grace_period_bounds_the_wait_for_in_flight_jobs(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    job_id = client.enqueue("stuck", {})
    started, release = threading.Event(), threading.Event()

    def handle(job: Job) -> None:
        started.set()
        release.wait(60)

    worker = make_worker(dsn, {"stuck": handle}, grace_period=0.5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert started.wait(30)
        worker.stop()
        thread.join(15)
        assert not thread.is_alive()
    finally:
        release.set()
        thread.join(30)
    assert events.named("worker.grace_expired")
    assert events.named("job.abandoned", job_id=job_id)
    assert job_row(conn, job_id)["status"] == "processing"  # its lease expires; a reaper hands it back


def test_worker_runs_in_a_non_main_thread_without_touching_signals(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    ids = client.enqueue_batch("thread", [{}, {}, {}])
    threads: list[str] = []
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def handle(job: Job) -> None:
        threads.append(threading.current_thread().name)

    worker = make_worker(dsn, {"thread": handle})
    with running(worker) as thread:
        assert thread is not threading.main_thread()
        wait_until(lambda: status_counts(conn).get("completed") == len(ids), timeout=30)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert len(threads) == 3 and all(name.startswith("openqueue-worker") for name in threads)


def test_stop_before_run_makes_run_return_at_once(dsn: str, client: Client) -> None:
    client.enqueue("early", {})
    handled: list[int] = []
    worker = make_worker(dsn, {"early": lambda job: handled.append(job.id)})
    worker.stop()
    worker.run()
    assert handled == []


def test_async_worker_completes_a_few_hundred_jobs_exactly_once(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    enqueued = client.enqueue_batch("a1", [{} for _ in range(150)]) + client.enqueue_batch(
        "a2", [{} for _ in range(150)]
    )
    handled: list[int] = []

    async def handle(job: Job) -> int:
        await asyncio.sleep(0.001)
        handled.append(job.id)
        return job.id

    async def main() -> None:
        worker = AsyncWorker(dsn, {"a1": handle, "a2": handle}, concurrency=16, poll_interval=60)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 60
        while status_counts(conn).get("completed") != len(enqueued):
            assert time.monotonic() < deadline, "timed out waiting for 300 completed jobs"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(main())  # in the main thread: signal handlers are installed and restored
    assert Counter(handled) == Counter(enqueued)
    rows = conn.execute("select status, attempts, count(*) from openqueue.jobs group by 1, 2").fetchall()
    assert rows == [("completed", 1, 300)]
    results = conn.execute("select count(*) from openqueue.jobs where result = to_jsonb(id)").fetchone()
    assert results == (300,)


def test_each_worker_kind_refuses_the_other_kind_of_handler(dsn: str) -> None:
    async def coroutine_handler(job: Job) -> None:
        pass

    with pytest.raises(WorkerError, match="AsyncWorker"):
        Worker(dsn, {"q": coroutine_handler})
    with pytest.raises(WorkerError, match="use Worker"):
        AsyncWorker(dsn, {"q": lambda job: None})
    with pytest.raises(WorkerError, match="not callable"):
        Worker(dsn, {"q": 42})
    with pytest.raises(WorkerError, match="non-empty"):
        Worker(dsn, {})
    with pytest.raises(WorkerError, match="concurrency"):
        Worker(dsn, {"q": print}, concurrency=0)


@pytest.mark.parametrize("lease_seconds", [0, 86401, 1.5])
def test_a_lease_setting_that_cannot_work_ends_run_with_worker_error(dsn: str, lease_seconds: object) -> None:
    worker = make_worker(dsn, {"q": print}, lease_seconds=lease_seconds)
    with pytest.raises(WorkerError, match="lease_seconds"):
        worker.run()


def test_invalid_queue_name_ends_run_with_worker_error(dsn: str) -> None:
    with pytest.raises(WorkerError, match="queue_name"):
        make_worker(dsn, {"no spaces allowed": print}).run()


def test_batches_never_exceed_free_slots_or_batch_size(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    client.enqueue_batch("batch", [{} for _ in range(40)])
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    def handle(job: Job) -> None:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.01)
        with lock:
            in_flight[0] -= 1

    with running(make_worker(dsn, {"batch": handle}, concurrency=4, batch_size=2)):
        wait_until(lambda: status_counts(conn).get("completed") == 40, timeout=30)
    assert peak[0] <= 4
    batches = [r.count for r in events.named("worker.leased", queue="batch")]
    assert sum(batches) == 40 and max(batches) == 2
