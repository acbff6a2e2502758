"""Stopping: the grace period is a deadline, a second signal raises like a library, handlers are told.

Each test names the promise it backs in README.md ("Workers", "Guarantees").
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from openqueue_py import AsyncWorker, Client, Job

from .conftest import REPO, WorkerProcess, job_row, make_worker, running, wait_until

HANDLERS = "tests.worker.handlers"


def _processing(conn: psycopg.Connection, worker_id: str) -> list[int]:
    rows = conn.execute(
        "select id from openqueue.jobs where status = 'processing' and leased_by = %s order by id",
        (worker_id,),
    ).fetchall()
    return [row[0] for row in rows]


def test_grace_period_is_a_deadline_the_process_exits_and_the_job_runs_again(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    job_id = client.enqueue("slow", {"sleep": 25})
    first = worker_process(
        dsn,
        "--queue",
        f"slow={HANDLERS}:sleepy",
        "--grace-period",
        "1",
        "--lease-seconds",
        "2",
        "--worker-id",
        "abandoner",
    )
    wait_until(lambda: _processing(conn, "abandoner") == [job_id], timeout=30, what="the job leased")
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0, first.log
    took = time.monotonic() - signalled
    assert took < 5, f"the process exited {took:.1f} s after SIGTERM with a 1 s grace period"
    assert "worker.grace_expired" in first.log and "worker.stopped" in first.log
    assert "job.abandoned" in first.log
    # The abandoned lease expires (2 s, no heartbeat any more) and another worker runs the job.
    second = worker_process(
        dsn,
        "--queue",
        f"slow={HANDLERS}:echo",
        "--reap-interval",
        "0.5",
        "--poll-interval",
        "0.5",
        "--worker-id",
        "second",
    )
    wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30, what="the job ran again")
    row = job_row(conn, job_id)
    assert row["attempts"] == 2 and row["leased_by"] == "second"
    assert any("lease expired" in str(error) for error in row["errors"])
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0


_HOST = r"""
import signal, sys, threading, time
from openqueue_py import Worker

def host_term(signum, frame):
    print("host handler got", signal.Signals(signum).name, flush=True)
    raise SystemExit(7)

signal.signal(signal.SIGTERM, host_term)
started = threading.Event()

def handle(job):
    started.set()
    print("handler started", flush=True)
    time.sleep(60)

worker = Worker(sys.argv[1], {"slow": handle}, poll_interval=0.2, grace_period=60)
try:
    worker.run()
except BaseException as exc:
    print("run raised", type(exc).__name__, flush=True)
    raise
finally:
    print("host finally ran", flush=True)
    print("SIGTERM handler restored:", signal.getsignal(signal.SIGTERM) is host_term, flush=True)
"""


def _host(dsn: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "host.py"
    script.write_text(_HOST)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), dsn],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _second_signal(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "handler started", line
    proc.send_signal(signum)
    time.sleep(0.5)  # the first one starts a graceful stop; the handler still runs
    assert proc.poll() is None, "the first signal must not end the process"
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, out


def test_a_second_sigint_raises_keyboard_interrupt_in_the_host_and_its_finally_runs(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    client.enqueue("slow", {})
    code, out = _second_signal(_host(dsn, tmp_path), signal.SIGINT)
    assert "run raised KeyboardInterrupt" in out, out
    assert "host finally ran" in out and "SIGTERM handler restored: True" in out, out
    assert code in (1, -signal.SIGINT, 128 + signal.SIGINT), out  # an uncaught KeyboardInterrupt


def test_a_second_sigterm_goes_to_the_host_handler_it_replaced(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    client.enqueue("slow", {})
    code, out = _second_signal(_host(dsn, tmp_path), signal.SIGTERM)
    assert "host handler got SIGTERM" in out and "run raised SystemExit" in out, out
    assert "host finally ran" in out and "SIGTERM handler restored: True" in out, out
    assert code == 7, out


def test_cli_second_sigint_exits_130(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    job_id = client.enqueue("stuck", {"sleep": 600})
    worker = worker_process(dsn, "--queue", f"stuck={HANDLERS}:sleepy", "--worker-id", "interrupted")
    wait_until(lambda: _processing(conn, "interrupted") == [job_id], timeout=30)
    worker.signal(signal.SIGINT)
    wait_until(lambda: "worker.stopping" in worker.log, timeout=30, what="worker.stopping")
    worker.signal(signal.SIGINT)
    assert worker.wait(10) == 130, worker.log
    assert "worker.exit_now" in worker.log and "Traceback" not in worker.log
    assert job_row(conn, job_id)["status"] == "processing"  # its lease will expire


def test_a_sync_handler_sees_lease_lost_and_returns_early(dsn: str, client: Client, events: Any) -> None:
    job_id = client.enqueue("watch", {})
    seen: list[tuple[bool, float]] = []
    started = threading.Event()

    def handle(job: Job) -> None:
        started.set()
        begun = time.monotonic()
        stopped = job.lease_lost.wait(30)  # the handler's own work would poll is_set()
        seen.append((stopped, time.monotonic() - begun))

    worker = make_worker(dsn, {"watch": handle}, handle_signals=False, lease_seconds=1)
    with running(worker):
        assert started.wait(30)
        assert client.cancel(job_id)
        wait_until(lambda: seen, timeout=10, what="the handler to return")
        wait_until(lambda: events.named("job.discarded", job_id=job_id), timeout=10)
    assert seen[0][0] is True and seen[0][1] < 5
    assert events.named("job.lease_lost", job_id=job_id)
    assert client.get_job(job_id).status == "cancelled"


def test_an_async_handler_is_cancelled_when_its_lease_is_lost(dsn: str, client: Client, events: Any) -> None:
    job_id = client.enqueue("watch", {})
    outcome: list[str] = []
    started = threading.Event()

    async def handle(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
            outcome.append("slept")
        except asyncio.CancelledError:
            outcome.append(f"cancelled, lease_lost={job.lease_lost.is_set()}")
            raise

    second = client.enqueue("watch2", {})
    done: list[int] = []

    async def handle2(job: Job) -> None:
        done.append(job.id)

    worker = AsyncWorker(
        dsn, {"watch": handle, "watch2": handle2}, handle_signals=False, lease_seconds=1, concurrency=1
    )
    with running(worker, lambda: asyncio.run(worker.run())):
        assert started.wait(30)
        assert client.cancel(job_id)
        wait_until(lambda: outcome, timeout=10, what="the handler to end")
        # The slot survives the cancellation and runs the next job.
        wait_until(lambda: done == [second], timeout=10, what="the next job on the same slot")
    assert outcome == ["cancelled, lease_lost=True"]
    assert events.named("job.discarded", job_id=job_id)


def test_abandoned_jobs_are_told_when_the_grace_period_runs_out(dsn: str, client: Client) -> None:
    client.enqueue("slow", {})
    told = threading.Event()
    started = threading.Event()

    def handle(job: Job) -> None:
        started.set()
        if job.lease_lost.wait(30):
            told.set()

    worker = make_worker(dsn, {"slow": handle}, handle_signals=False, grace_period=0.2)
    with running(worker):
        assert started.wait(30)
    assert told.wait(5)
