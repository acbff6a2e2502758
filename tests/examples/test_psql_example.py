"""examples/psql/run.sh: the whole lifecycle with nothing but psql, checking its own results."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "psql" / "run.sh"


def _run(pg_server, dsn: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DSN": dsn, "PSQL": pg_server.psql()}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


def test_the_psql_example_enqueues_leases_acks_nacks_and_replays(
    pg_server, dsn: str, conn: psycopg.Connection
) -> None:
    done = _run(pg_server, dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("all good")
    rows = conn.execute(
        "select status, attempts, jsonb_array_length(errors) from openqueue.jobs"
        " where queue_name = 'psql_example' order by id"
    ).fetchall()
    assert rows == [("completed", 1, 0), ("completed", 1, 2)]


def test_the_psql_example_exits_non_zero_on_a_wrong_result(
    pg_server, dsn: str, conn: psycopg.Connection
) -> None:
    # A job left in the queue is leased before the example's own: its first check fails.
    conn.execute("select openqueue.oq_enqueue('psql_example', '{}', priority => 100)")
    done = _run(pg_server, dsn)
    assert done.returncode == 1
    assert "FAIL: leased first (highest priority)" in done.stderr
