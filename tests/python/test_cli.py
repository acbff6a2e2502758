"""The ``openqueue`` command line: click's runner, and one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from openqueue_py import Client, JobState
from openqueue_py.cli import main
from openqueue_py.migrate import latest_version


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_install_into_an_empty_database_then_up_to_date(runner, empty_dsn):
    first = runner.invoke(main, ["install", "--dsn", empty_dsn])
    assert first.exit_code == 0, first.output
    assert f"upgraded from version 0 to {latest_version()}" in first.stdout

    second = runner.invoke(main, ["install", "--dsn", empty_dsn])
    assert second.exit_code == 0, second.output
    assert "up to date" in second.stdout
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("select version from openqueue.schema_migrations").fetchall()
    assert rows == [(v,) for v in range(1, latest_version() + 1)]


def test_install_reads_openqueue_dsn(runner, empty_dsn):
    result = runner.invoke(main, ["install"], env={"OPENQUEUE_DSN": empty_dsn})
    assert result.exit_code == 0, result.output
    assert "upgraded" in result.stdout


def test_install_refuses_a_newer_schema(runner, dsn, conn):
    conn.execute("insert into openqueue.schema_migrations (version, name) values (999, '0999_future')")
    result = runner.invoke(main, ["install", "--dsn", dsn])
    assert result.exit_code == 1
    assert "newer" in result.stderr
    assert result.stdout == ""


def test_enqueue_prints_an_id(runner, dsn, client):
    result = runner.invoke(
        main,
        [
            "enqueue",
            "--dsn",
            dsn,
            "--queue",
            "emails",
            "--payload",
            '{"to": "a@example.com"}',
            "--priority",
            "3",
            "--max-attempts",
            "2",
            "--idempotency-key",
            "k",
        ],
    )
    assert result.exit_code == 0, result.output
    job_id = int(result.stdout.strip())
    record = client.get_job(job_id)
    assert record.queue_name == "emails"
    assert record.payload == {"to": "a@example.com"}
    assert (record.priority, record.max_attempts, record.idempotency_key) == (3, 2, "k")
    assert record.status is JobState.PENDING

    again = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "emails", "--idempotency-key", "k"])
    assert again.exit_code == 0 and int(again.stdout) == job_id

    default = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "emails"])
    assert client.get_job(int(default.stdout)).payload == {}


def test_enqueue_with_delay(runner, dsn, client, conn):
    result = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "later", "--delay", "3600"])
    assert result.exit_code == 0, result.output
    run_at = client.get_job(int(result.stdout)).run_at
    (delta,) = conn.execute("select %s - now()", (run_at,)).fetchone()
    assert 3590 < delta.total_seconds() <= 3600
    assert client.lease("later", "w") is None


def test_enqueue_with_bad_payload_json(runner, dsn, conn):
    result = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "q", "--payload", "{not json"])
    assert result.exit_code == 2  # bad arguments
    assert "--payload is not valid JSON" in result.stderr
    assert result.stdout == ""
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 0


def test_enqueue_with_a_bad_queue_name(runner, dsn):
    result = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "bad name!"])
    assert result.exit_code == 2  # the database refused the argument (22023): bad arguments
    assert "queue_name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "CONTEXT" not in result.stderr


def test_stats_json(runner, dsn, client):
    client.enqueue_batch("a", [{}, {}])
    leased = client.lease("a", "w")
    client.ack(leased.job.id, leased.lease_token)
    client.enqueue("b", {})
    result = runner.invoke(main, ["stats", "--dsn", dsn, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["queue_name"] for r in rows] == ["a", "b"]
    a = rows[0]
    assert {k: a[k] for k in ("pending", "processing", "failed", "completed", "dead", "cancelled")} == {
        "pending": 1,
        "processing": 0,
        "failed": 0,
        "completed": 1,
        "dead": 0,
        "cancelled": 0,
    }
    assert isinstance(a["oldest_due_at"], str)
    assert a["paused"] is False

    table = runner.invoke(main, ["stats", "--dsn", dsn])
    assert table.exit_code == 0, table.output
    assert "a" in table.stdout and "b" in table.stdout


def test_stats_json_empty(runner, dsn):
    result = runner.invoke(main, ["stats", "--dsn", dsn, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_cancel_and_replay_exit_codes(runner, dsn, client):
    job_id = client.enqueue("q", {})

    replay_pending = runner.invoke(main, ["replay", "--dsn", dsn, str(job_id)])
    assert replay_pending.exit_code == 1
    assert "not dead or cancelled" in replay_pending.stderr

    cancel = runner.invoke(main, ["cancel", "--dsn", dsn, str(job_id)])
    assert cancel.exit_code == 0, cancel.output
    assert f"cancelled job {job_id}" in cancel.stdout
    assert client.get_job(job_id).status is JobState.CANCELLED

    cancel_again = runner.invoke(main, ["cancel", "--dsn", dsn, str(job_id)])
    assert cancel_again.exit_code == 1
    assert "not pending, failed or processing" in cancel_again.stderr

    replay = runner.invoke(main, ["replay", "--dsn", dsn, str(job_id)])
    assert replay.exit_code == 0, replay.output
    assert f"replayed job {job_id}" in replay.stdout
    assert client.get_job(job_id).status is JobState.PENDING

    unknown = runner.invoke(main, ["cancel", "--dsn", dsn, "999999"])
    assert unknown.exit_code == 5  # no such job
    assert "job 999999 does not exist" in unknown.stderr
    not_a_number = runner.invoke(main, ["cancel", "--dsn", dsn, "abc"])
    assert not_a_number.exit_code == 2  # click usage error


def test_reap_and_purge(runner, dsn, client, conn):
    job_id = client.enqueue("q", {})
    client.lease("q", "w")
    conn.execute("update openqueue.live_jobs set lease_expires_at = now() - interval '1 s'")
    reap = runner.invoke(main, ["reap", "--dsn", dsn])
    assert reap.exit_code == 0 and reap.stdout.strip() == "1"
    assert client.get_job(job_id).status is JobState.PENDING

    client.cancel(job_id)
    conn.execute("update openqueue.finished_jobs set finished_at = now() - interval '1 hour'")
    purge = runner.invoke(main, ["purge", "--dsn", dsn, "--older-than", "60"])
    assert purge.exit_code == 0 and purge.stdout.strip() == "1"
    assert client.get_job(job_id) is None


def test_not_installed_database_fails_cleanly(runner, empty_dsn):
    # OpenQueue not installed: a clean message, exit 4 (EXIT_NOT_INSTALLED), no traceback.
    result = runner.invoke(main, ["stats", "--dsn", empty_dsn, "--json"])
    assert result.exit_code == 4
    assert result.stderr.startswith("openqueue: ")


def test_real_subprocess(empty_dsn):
    executable = Path(sys.executable).parent / "openqueue"
    assert executable.exists(), f"{executable} missing: pip install -e ."

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(executable), *args], capture_output=True, text=True, timeout=60, check=False
        )

    install = run("install", "--dsn", empty_dsn)
    assert install.returncode == 0, install.stderr
    assert "upgraded" in install.stdout
    assert "up to date" in run("install", "--dsn", empty_dsn).stdout

    enqueue = run("enqueue", "--dsn", empty_dsn, "--queue", "sub", "--payload", '{"n": 1}')
    assert enqueue.returncode == 0, enqueue.stderr
    job_id = int(enqueue.stdout)
    with Client(empty_dsn) as client:
        assert client.get_job(job_id).payload == {"n": 1}

    bad = run("enqueue", "--dsn", empty_dsn, "--queue", "sub", "--payload", "[1,")
    assert bad.returncode == 2
    assert "--payload is not valid JSON" in bad.stderr

    stats = run("stats", "--dsn", empty_dsn, "--json")
    assert stats.returncode == 0
    assert json.loads(stats.stdout)[0]["pending"] == 1
