"""Shared pieces of the benchmarks: a database to run on, and worker processes.

By default each benchmark starts its own embedded PostgreSQL (default
durability settings: fsync and synchronous_commit on) in a temporary
directory; ``OPENQUEUE_BENCH_DSN`` points it at an existing database instead
(OpenQueue is installed there and its tables emptied first).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

import openqueue_py

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def database() -> Iterator[str]:
    """A DSN with OpenQueue installed and no jobs."""
    external = os.environ.get("OPENQUEUE_BENCH_DSN")
    if external:
        openqueue_py.install(external)
        with psycopg.connect(external, autocommit=True) as conn:
            conn.execute(
                "truncate openqueue.live_jobs, openqueue.finished_jobs, "
                "openqueue.idempotency_keys, openqueue.queues"
            )
        yield external
        return
    from openqueue_py.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        openqueue_py.install(pg.dsn())
        yield pg.dsn()


def spawn(*args: str) -> subprocess.Popen:
    """Run ``python -m bench.<args>`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env)


def wait_until_drained(dsn: str, queue: str, total: int, timeout: float = 600.0) -> None:
    """Block until ``total`` jobs of ``queue`` are completed."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from openqueue.finished_jobs where status = 'completed' and queue_name = %s",
                (queue,),
            ).fetchone()
            if row and row[0] >= total:
                return
            time.sleep(0.05)
    raise TimeoutError(f"{total} jobs not completed within {timeout} s")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank on sorted values."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
    return f"{system}, {cpu}, Python {platform.python_version()}"


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("show server_version").fetchone()
        return row[0] if row else "?"
