"""examples/node/: a Node.js worker on the pg package drains a queue and checks the outcome.

Needs node and npm (``npm ci`` installs ``pg`` from examples/node/package-lock.json).
Without them the test is skipped, saying why, unless OPENQUEUE_REQUIRE_NODE is
set (CI sets it), in which case it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"
REQUIRED = bool(os.environ.get("OPENQUEUE_REQUIRE_NODE"))


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"OPENQUEUE_REQUIRE_NODE is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed for examples/node (apt-get install nodejs npm)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        _unavailable(f"npm ci failed in examples/node: {done.stderr.strip()[-500:]}")
    return node


def _pg_env(dsn: str) -> dict[str, str]:
    """The test database as the PG* variables that node-postgres reads."""
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    names = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "password": "PGPASSWORD",
        "dbname": "PGDATABASE",
    }
    env.update({names[k]: str(v) for k, v in params.items() if k in names and v is not None})
    return env


def test_the_node_worker_completes_every_job_retries_the_flaky_and_buries_the_poison(
    node: str, dsn: str, conn: psycopg.Connection
) -> None:
    done = subprocess.run(
        [node, "run.js"], cwd=NODE_DIR, env=_pg_env(dsn), capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("all good")
    # Checked here too, from the database, not only by the script.
    rows = conn.execute(
        "select status, count(*), sum(attempts) from openqueue.jobs where queue_name = 'node_example'"
        " group by status order by status"
    ).fetchall()
    assert rows == [("completed", 50, 55), ("dead", 1, 2)]
    leased_by = conn.execute(
        "select distinct leased_by like 'node-%' from openqueue.jobs where queue_name = 'node_example'"
    ).fetchall()
    assert leased_by == [(True,)]


def test_the_node_driver_exits_non_zero_when_the_outcome_is_wrong(
    node: str, dsn: str, conn: psycopg.Connection
) -> None:
    # A queue whose jobs may not be retried: every tenth job dies at its first failure.
    conn.execute("select openqueue.oq_configure_queue('node_example', max_attempts => 1)")
    done = subprocess.run(
        [node, "run.js"],
        cwd=NODE_DIR,
        env={**_pg_env(dsn), "JOBS": "20"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL:" in done.stderr
