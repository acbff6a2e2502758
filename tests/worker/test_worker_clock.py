"""Time comes from the database: a worker whose wall clock is off behaves the same."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from openqueue_py import Client, Job

from .conftest import job_row, make_worker, running, wait_until

WORKER = Path(__file__).resolve().parents[2] / "openqueue_py" / "worker"


def test_the_worker_never_reads_the_wall_clock() -> None:
    wall_clock = re.compile(r"\btime\.time\(|\bdatetime\.now\(|\bdatetime\.utcnow\(|\bdate\.today\(")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(WORKER.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if wall_clock.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("skew", [-600.0, 600.0])
def test_a_skewed_wall_clock_changes_neither_schedules_nor_heartbeats(
    dsn: str, client: Client, conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)  # 10 minutes off
    run_at = conn.execute("select now() + interval '1 second'").fetchone()[0]
    later = client.enqueue("skewed", {"sleep": 0}, run_at=run_at)
    long = client.enqueue("skewed", {"sleep": 2.5})
    started: dict[int, object] = {}

    def handle(job: Job) -> None:
        started[job.id] = conn.execute("select clock_timestamp()").fetchone()[0]
        time.sleep(job.payload["sleep"])

    # A 1-second lease: a heartbeat scheduled from a clock 10 minutes off would lose it.
    worker = make_worker(dsn, {"skewed": handle}, lease_seconds=1, reap_interval=0.2, poll_interval=60)
    with running(worker):
        wait_until(
            lambda: {job_row(conn, i)["status"] for i in (later, long)} == {"completed"},
            timeout=30,
            what="both jobs",
        )
    assert timedelta(0) <= started[later] - run_at < timedelta(seconds=0.5)
    for job_id in (later, long):
        row = job_row(conn, job_id)
        assert row["attempts"] == 1 and row["errors"] == []
