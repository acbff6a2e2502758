"""Helpers for the worker tests: a worker in a thread, a worker in a process, its log."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from openqueue_py import Worker

REPO = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def wait_until_waiting(conn: psycopg.Connection, worker: Any, what: str) -> None:
    """Until ``worker`` has registered with oq_wait: its start-up leases are done and it sleeps."""
    wait_until(
        lambda: conn.execute(
            "select 1 from openqueue.queue_waiters where worker_id = %s", (worker.worker_id,)
        ).fetchone(),
        what=what,
    )


def status_counts(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute("select status, count(*) from openqueue.jobs group by status").fetchall()
    return {status: count for status, count in rows}


def job_row(conn: psycopg.Connection, job_id: int) -> dict[str, Any]:
    cursor = conn.execute(
        "select status, attempts, errors, result, leased_by, run_at from openqueue.jobs where id = %s",
        (job_id,),
    )
    row = cursor.fetchone()
    assert row is not None, f"job {job_id} not found"
    return dict(zip(["status", "attempts", "errors", "result", "leased_by", "run_at"], row, strict=True))


class Events(logging.Handler):
    """Every record of the openqueue.worker logger, for assertions on event names (``record.event``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str, **fields: Any) -> list[logging.LogRecord]:
        return [
            r
            for r in list(self.records)
            if getattr(r, "event", None) == event and all(getattr(r, k, None) == v for k, v in fields.items())
        ]


@pytest.fixture
def events() -> Iterator[Events]:
    logger = logging.getLogger("openqueue.worker")
    handler = Events()
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(previous)


@contextmanager
def running(worker: Any, run: Callable[[], Any] | None = None) -> Iterator[threading.Thread]:
    """Run ``worker`` in a thread for the block; stop it and check run() returned cleanly."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            (run or worker.run)()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="worker-under-test", daemon=True)
    thread.start()
    failed = True
    try:
        yield thread
        failed = False
    finally:
        worker.stop(force=failed)
        thread.join(60)
    assert not thread.is_alive(), "run() did not return within 60 s of stop()"
    assert not errors, f"run() raised {errors[0]!r}"


def make_worker(dsn: str, handlers: dict[str, Any], **options: Any) -> Worker:
    options.setdefault("poll_interval", 60.0)
    options.setdefault("grace_period", 10.0)
    return Worker(dsn, handlers, **options)


_process_counter = itertools.count()


class WorkerProcess:
    """``python -m openqueue_py worker ...`` in a subprocess; stderr goes to a file."""

    def __init__(self, dsn: str, args: list[str], log_dir: Path) -> None:
        self.log_path = log_dir / f"worker-{next(_process_counter)}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env.pop("OPENQUEUE_DSN", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "openqueue_py", "worker", "--dsn", dsn, *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker process still running after {timeout} s; log:\n{self.log}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses; every one is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(dsn: str, *args: str) -> WorkerProcess:
        process = WorkerProcess(dsn, list(args), tmp_path)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()
