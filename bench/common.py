"""Shared pieces of the benchmarks: a database to run on, probes of what is installed, timing helpers.

By default each benchmark starts its own embedded PostgreSQL (default
durability settings: fsync and synchronous_commit on) in a temporary
directory; ``OPENQUEUE_BENCH_DSN`` points it at an existing database instead
(OpenQueue is installed there and every OpenQueue and yardstick table is
emptied first).

Nothing here depends on OpenQueue's table layout: jobs are created through
the ``oq_*`` functions (or, for the 10,000,000-row setups, through
``bench.large``'s loader) and read back through the documented
``openqueue.jobs`` view.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
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

# Where the server's own client programs are (pgbench); None for an external server.
_BIN_DIR: Path | None = None


@contextmanager
def database() -> Iterator[str]:
    """A DSN with OpenQueue installed, no jobs and an empty yardstick schema."""
    global _BIN_DIR
    external = os.environ.get("OPENQUEUE_BENCH_DSN")
    if external:
        openqueue_py.install(external)
        with psycopg.connect(external, autocommit=True) as conn:
            reset_openqueue(conn)
            conn.execute("drop schema if exists yardstick cascade")
        yield external
        return
    from openqueue_py.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        _BIN_DIR = pg.bin_dir
        openqueue_py.install(pg.dsn())
        try:
            yield pg.dsn()
        finally:
            _BIN_DIR = None


def reset_openqueue(conn: psycopg.Connection) -> None:
    """Empty every OpenQueue table but the migration record (whatever the layout is)."""
    rows = conn.execute(
        "select format('%I.%I', n.nspname, c.relname) from pg_class as c "
        "join pg_namespace as n on n.oid = c.relnamespace "
        "where n.nspname = 'openqueue' and c.relkind in ('r', 'p') and not c.relispartition "
        "and c.relname <> 'schema_migrations'"
    ).fetchall()
    if rows:
        conn.execute("truncate " + ", ".join(row[0] for row in rows))


def pgbench_path() -> str | None:
    """The embedded server's pgbench, else the one on PATH."""
    if _BIN_DIR is not None and (_BIN_DIR / "pgbench").exists():
        return str(_BIN_DIR / "pgbench")
    for candidate in ("pgbench", "/usr/lib/postgresql/15/bin/pgbench"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def has_function(conn: psycopg.Connection, name: str) -> bool:
    """Whether ``openqueue.<name>`` exists (any signature): new API may not be installed yet."""
    row = conn.execute(
        "select exists (select from pg_proc where pronamespace = 'openqueue'::regnamespace and proname = %s)",
        (name,),
    ).fetchone()
    return bool(row and row[0])


def function_kind(conn: psycopg.Connection, name: str) -> str | None:
    """'f' (function), 'p' (procedure) or None when ``openqueue.<name>`` is missing."""
    row = conn.execute(
        "select prokind from pg_proc where pronamespace = 'openqueue'::regnamespace and proname = %s limit 1",
        (name,),
    ).fetchone()
    return row[0] if row else None


def spawn(*args: str) -> subprocess.Popen:
    """Run ``python -m bench.<args>`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env)


def preload(conn: psycopg.Connection, queue: str, jobs: int, chunk: int = 50_000) -> list[int]:
    """Enqueue ``jobs`` due no-op jobs with oq_enqueue_batch (payloads built server-side); their ids.

    The caller's queue must be its own, so that the ids of one preload form
    one contiguous range of the sequence (see :func:`unfinished`).
    """
    ids: list[int] = []
    for start in range(0, jobs, chunk):
        count = min(chunk, jobs - start)
        row = conn.execute(
            "select array_agg(id) from openqueue.oq_enqueue_batch(%s, "
            "(select jsonb_agg(jsonb_build_object('n', g)) from generate_series(1, %s) as g)) as id",
            (queue, count),
        ).fetchone()
        ids.extend(row[0] if row and row[0] else [])
    return ids


def unfinished(conn: psycopg.Connection, ids: list[int]) -> int:
    """How many of these jobs have no finished_at yet.

    ``ids`` come from one preload, so they are one contiguous range: a range
    scan of the primary keys behind ``openqueue.jobs``, cheap however many
    other jobs the tables hold (an ``id = any(<20,000 ids>)`` may become a
    sequential scan of 10,000,000 finished rows).
    """
    row = conn.execute(
        "select count(*) from openqueue.jobs where id between %s and %s and finished_at is null",
        (min(ids), max(ids)),
    ).fetchone()
    return int(row[0]) if row else len(ids)


def wait_until_drained(dsn: str, queue: str, total: int, timeout: float = 600.0) -> None:
    """Block until ``total`` jobs of ``queue`` are completed (small databases only: counts the view)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select count(*) from openqueue.jobs where status = 'completed' and queue_name = %s",
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


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


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


def server_settings(dsn: str) -> str:
    """PostgreSQL version and the settings that decide these figures, for RESULTS.md."""
    with psycopg.connect(dsn) as conn:
        values = {}
        for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers", "max_connections"):
            row = conn.execute(f"show {name}").fetchone()
            values[name] = row[0] if row else "?"
    version = values.pop("server_version").split()[0]
    return f"PG {version}; " + ", ".join(f"{k}={v}" for k, v in values.items())


def statement_name(query: str) -> str:
    """A worker statement named by the oq_* functions it calls (``oq_ack_many+oq_lease``), else its verb."""
    called = sorted(set(re.findall(r"openqueue\.(oq_\w+)", query)))
    return "+".join(called) or query.split()[1]
