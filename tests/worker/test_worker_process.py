"""Workers in their own processes: the CLI, signals, a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

from openqueue_py import Client, Job
from openqueue_py.cli import main

from .conftest import REPO, WorkerProcess, job_row, make_worker, running, status_counts, wait_until

HANDLERS = "tests.worker.handlers"


def _processing(conn: psycopg.Connection, leased_by: str) -> list[int]:
    rows = conn.execute(
        "select id from openqueue.jobs where status = 'processing' and leased_by = %s order by id",
        (leased_by,),
    ).fetchall()
    return [r[0] for r in rows]


def test_job_of_a_killed_worker_is_reclaimed_after_its_lease_and_completed_by_another(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    job_id = client.enqueue("crash", {"sleep": 600})
    victim = worker_process(
        dsn, "--queue", f"crash={HANDLERS}:sleepy", "--lease-seconds", "1", "--worker-id", "victim"
    )
    wait_until(lambda: _processing(conn, "victim") == [job_id], timeout=30, what="the victim's lease")
    victim.proc.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL

    handled: list[int] = []

    def handle(job: Job) -> str:
        handled.append(job.id)
        return "rescued"

    rescuer = make_worker(dsn, {"crash": handle}, reap_interval=0.2, poll_interval=0.5, worker_id="rescuer")
    with running(rescuer):
        wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=30, what="the rescue")
    row = job_row(conn, job_id)
    assert handled == [job_id]
    assert row["attempts"] == 2 and row["result"] == "rescued" and row["leased_by"] == "rescuer"
    assert [e["error"] for e in row["errors"]] == ["lease expired"]


def test_sigterm_lets_in_flight_jobs_finish_and_exits_zero(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    ids = client.enqueue_batch("term", [{"sleep": 1.0} for _ in range(8)])
    worker = worker_process(
        dsn, "--queue", f"term={HANDLERS}:sleepy", "--concurrency", "4", "--worker-id", "termed"
    )
    in_flight = wait_until(
        lambda: len(_processing(conn, "termed")) == 4 and _processing(conn, "termed"), timeout=30
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log
    counts = status_counts(conn)
    assert "processing" not in counts
    for job_id in in_flight:
        assert job_row(conn, job_id)["status"] == "completed"
    assert counts.get("completed", 0) + counts.get("pending", 0) == len(ids)
    assert counts.get("pending", 0) >= 1  # it stopped leasing
    assert "worker.stopping" in worker.log and "worker.stopped" in worker.log


def test_second_sigterm_exits_at_once_leaving_the_lease_to_expire(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    job_id = client.enqueue("stuck", {"sleep": 600})
    worker = worker_process(dsn, "--queue", f"stuck={HANDLERS}:sleepy", "--worker-id", "stubborn")
    wait_until(lambda: _processing(conn, "stubborn") == [job_id], timeout=30)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "worker.stopping" in worker.log, timeout=30, what="worker.stopping")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 128 + signal.SIGTERM
    assert "worker.exit_now" in worker.log
    assert job_row(conn, job_id)["status"] == "processing"


def test_cli_worker_processes_jobs_and_exits_zero_on_sigterm(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    ids = client.enqueue_batch("cli", [{"n": n} for n in range(20)])
    worker = worker_process(
        dsn,
        "--queue",
        f"cli={HANDLERS}:echo",
        "--concurrency",
        "2",
        "--poll-interval",
        "30",
        "--grace-period",
        "5",
    )
    wait_until(lambda: status_counts(conn).get("completed") == 20, timeout=60, what="20 completed jobs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log
    results = conn.execute("select id, result from openqueue.jobs order by id").fetchall()
    assert results == [(job_id, {"n": n}) for n, job_id in enumerate(ids)]
    log = worker.log
    assert "worker.started" in log and "job.completed" in log and "Traceback" not in log


def test_cli_app_form_with_async_handlers_selects_the_async_worker(
    dsn: str, client: Client, conn: psycopg.Connection, worker_process: Callable[..., WorkerProcess]
) -> None:
    client.enqueue("q1", {"a": 1})
    client.enqueue("q3", {"b": 2})
    worker = worker_process(dsn, "--app", f"{HANDLERS}:app", "--queue", f"q3={HANDLERS}:echo")
    wait_until(lambda: status_counts(conn).get("completed") == 2, timeout=60)
    worker.signal(signal.SIGINT)
    assert worker.wait(30) == 0, worker.log

    client.enqueue("aq", {"c": 3})
    async_worker = worker_process(dsn, "--queue", f"aq={HANDLERS}:async_echo")
    wait_until(lambda: status_counts(conn).get("completed") == 3, timeout=60)
    async_worker.signal(signal.SIGTERM)
    assert async_worker.wait(30) == 0, async_worker.log
    assert conn.execute("select result from openqueue.jobs where queue_name = 'aq'").fetchone() == ({"c": 3},)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queue", "no-equals-sign"], "NAME=module:function"),
        (["--queue", "q=tests.worker.handlers"], "module:attribute"),
        (["--queue", "q=tests.worker.no_such_module:echo"], "cannot import module"),
        (["--queue", "q=tests.worker.handlers:no_such_function"], "has no attribute"),
        (["--queue", "q=tests.worker.handlers:not_a_dict"], "not callable"),
        (["--app", "tests.worker.handlers:not_a_dict"], "not a dict"),
        (["--queue", "q=tests.worker.handlers:echo", "--queue", "q=tests.worker.handlers:echo"], "twice"),
        (["--queue", "a=tests.worker.handlers:echo", "--queue", "b=tests.worker.handlers:async_echo"], "mix"),
        ([], "at least one --queue"),
        (["--queue", "q=tests.worker.handlers:echo", "--concurrency", "0"], "concurrency"),
    ],
)
def test_cli_worker_bad_spec_exits_non_zero_with_a_clear_message(
    dsn: str, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["worker", "--dsn", dsn, *args])
    assert result.exit_code != 0
    assert message in result.output


def test_cli_worker_bad_spec_in_a_real_process(
    dsn: str, worker_process: Callable[..., WorkerProcess]
) -> None:
    worker = worker_process(dsn, "--queue", "q=nowhere:nothing")
    assert worker.wait(30) != 0
    assert "cannot import module 'nowhere'" in worker.log


def test_worker_example_runs_as_written(dsn: str) -> None:
    env = {**os.environ, "OPENQUEUE_DSN": dsn, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "examples/worker_example.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("completed, attempts=1" in line and "ada@example.com" in line for line in lines)
    assert any("completed, attempts=2" in line and "grace@example.com" in line for line in lines)
    assert any("dead, attempts=1" in line for line in lines)
    assert "Retry: mail server busy" in result.stdout and "Fail: not an email address" in result.stdout
