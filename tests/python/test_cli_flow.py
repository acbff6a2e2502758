"""The CLI for schedules and flow control: schedule add|list|remove, pause, resume, limits, stats."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from click.testing import CliRunner

from openqueue_py import Client
from openqueue_py.cli import main
from openqueue_py.cli._common import format_period
from openqueue_py.cli.flow import parse_rate

USAGE = 2
NOT_FOUND = 5


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _one_line_error(result, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _limits(client: Client, queue: str) -> tuple[int | None, int | None, timedelta]:
    (settings,) = [s for s in client.queue_settings() if s.queue_name == queue]
    return settings.max_running, settings.rate_limit, settings.rate_period


# -- rates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [
        ("100/1m", 100, 60),
        ("5/s", 5, 1),
        ("5/S", 5, 1),
        ("10/30s", 10, 30),
        ("1/h", 1, 3600),
        ("7 / 2h", 7, 7200),
        ("3/250ms", 3, 0.25),
        ("2/90", 2, 90),
    ],
)
def test_parse_rate(text, count, seconds):
    assert parse_rate(text) == (count, timedelta(seconds=seconds))


@pytest.mark.parametrize("text", ["", "100", "/1m", "100/", "0/1m", "-1/1m", "1.5/s", "5/0s", "5/xyz", "a/s"])
def test_parse_rate_refuses(text):
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (60, "1m"), (90, "90s"), (3600, "1h"), (86400, "1d"), (0.25, "250ms")]
)
def test_format_period(seconds, text):
    assert format_period(timedelta(seconds=seconds)) == text
    assert parse_rate(f"1/{text}")[1] == timedelta(seconds=seconds)


# -- schedules --------------------------------------------------------------------------------


def test_schedule_add_list_remove(runner, dsn, client):
    added = runner.invoke(
        main,
        [
            "schedule", "add", "--dsn", dsn, "nightly", "0 2 * * *", "reports",
            "--payload", '{"kind": "daily"}', "--priority", "3", "--max-attempts", "2",
            "--timezone", "Europe/Berlin",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert added.stdout.startswith("scheduled nightly: '0 2 * * *' (Europe/Berlin) into queue reports")
    assert "next run" in added.stdout
    (stored,) = client.list_schedules()
    assert (stored.schedule_name, stored.cron, stored.queue_name, stored.timezone) == (
        "nightly",
        "0 2 * * *",
        "reports",
        "Europe/Berlin",
    )
    assert (stored.payload, stored.priority, stored.max_attempts) == ({"kind": "daily"}, 3, 2)
    assert stored.next_run_at == client.cron_next("0 2 * * *", stored.created_at, "Europe/Berlin")

    assert runner.invoke(main, ["schedule", "add", "--dsn", dsn, "often", "*/5 * * * *", "q"]).exit_code == 0

    listed = runner.invoke(main, ["schedule", "list", "--dsn", dsn, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["schedule_name"] for r in rows] == ["nightly", "often"]
    nightly = rows[0]
    assert nightly["cron"] == "0 2 * * *" and nightly["timezone"] == "Europe/Berlin"
    assert nightly["queue_name"] == "reports" and nightly["payload"] == {"kind": "daily"}
    assert datetime.fromisoformat(nightly["next_run_at"]) == stored.next_run_at
    assert nightly["last_run_at"] is None
    assert rows[1]["timezone"] == "UTC" and rows[1]["priority"] == 0 and rows[1]["max_attempts"] is None

    table = runner.invoke(main, ["schedule", "list", "--dsn", dsn])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["name", "cron", "timezone", "queue", "next", "run", "last", "run"]
    nightly_line = next(line for line in lines if line.startswith("nightly"))
    assert "0 2 * * *" in nightly_line and "Europe/Berlin" in nightly_line and "reports" in nightly_line
    assert stored.next_run_at.isoformat(timespec="seconds") in nightly_line

    removed = runner.invoke(main, ["schedule", "remove", "--dsn", dsn, "nightly"])
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.strip() == "removed schedule nightly"
    assert [s.schedule_name for s in client.list_schedules()] == ["often"]


def test_schedule_list_shows_the_last_run_after_a_tick(runner, dsn, client):
    client.schedule("minutely", "* * * * *", "q")
    (before,) = client.list_schedules()
    assert client.tick(before.next_run_at) == 1
    rows = json.loads(runner.invoke(main, ["schedule", "list", "--dsn", dsn, "--json"]).stdout)
    assert datetime.fromisoformat(rows[0]["last_run_at"]) == before.next_run_at
    table = runner.invoke(main, ["schedule", "list", "--dsn", dsn]).stdout
    assert before.next_run_at.isoformat(timespec="seconds") in table


def test_schedule_list_empty(runner, dsn):
    assert json.loads(runner.invoke(main, ["schedule", "list", "--dsn", dsn, "--json"]).stdout) == []
    table = runner.invoke(main, ["schedule", "list", "--dsn", dsn])
    assert table.exit_code == 0 and table.stdout.startswith("no schedules yet")


def test_schedule_add_replaces_the_definition(runner, dsn, client):
    assert runner.invoke(main, ["schedule", "add", "--dsn", dsn, "s", "@hourly", "q"]).exit_code == 0
    assert runner.invoke(main, ["schedule", "add", "--dsn", dsn, "s", "@daily", "q2"]).exit_code == 0
    (stored,) = client.list_schedules()
    assert (stored.cron, stored.queue_name) == ("@daily", "q2")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["s", "61 * * * *", "q"], ["cron"]),
        (["s", "* * * *", "q"], ["cron"]),
        (["s", "@sometimes", "q"], ["cron"]),
        (["s", "* * * * *", "q", "--timezone", "Mars/Olympus"], ["timezone"]),
        (["bad name!", "* * * * *", "q"], ["schedule_name"]),
        (["s", "* * * * *", "bad queue!"], ["queue_name"]),
        (["s", "* * * * *", "q", "--max-attempts", "0"], ["max_attempts"]),
        (["s", "* * * * *", "q", "--payload", "{nope"], ["--payload", "JSON"]),
    ],
)
def test_schedule_add_bad_input_is_exit_2_with_one_line(runner, dsn, client, args, words):
    result = runner.invoke(main, ["schedule", "add", "--dsn", dsn, *args])
    assert result.exit_code == USAGE, result.output
    _one_line_error(result, *words)
    assert "CONTEXT" not in result.stderr
    assert client.list_schedules() == []


def test_schedule_remove_unknown_is_exit_5(runner, dsn):
    result = runner.invoke(main, ["schedule", "remove", "--dsn", dsn, "nothing"])
    assert result.exit_code == NOT_FOUND
    _one_line_error(result, "schedule nothing does not exist")


def test_schedule_remove_keeps_the_jobs_it_enqueued(runner, dsn, client):
    client.schedule("s", "* * * * *", "q")
    (stored,) = client.list_schedules()
    assert client.tick(stored.next_run_at) == 1
    assert runner.invoke(main, ["schedule", "remove", "--dsn", dsn, "s"]).exit_code == 0
    assert [j.idempotency_key for j in client.list_jobs("q")] == [
        f"schedule:s:{int(stored.next_run_at.timestamp())}"
    ]


# -- pause and resume ---------------------------------------------------------------------------


def test_pause_and_resume_say_whether_they_changed_anything(runner, dsn, client):
    client.enqueue("q", {})
    first = runner.invoke(main, ["pause", "--dsn", dsn, "q"])
    assert first.exit_code == 0 and first.stdout.strip() == "paused queue q"
    again = runner.invoke(main, ["pause", "--dsn", dsn, "q"])
    assert again.exit_code == 0 and again.stdout.strip() == "queue q was already paused"
    assert client.lease("q", "w") is None
    assert [s.paused for s in client.stats() if s.queue_name == "q"] == [True]

    resumed = runner.invoke(main, ["resume", "--dsn", dsn, "q"])
    assert resumed.exit_code == 0 and resumed.stdout.strip() == "resumed queue q"
    not_paused = runner.invoke(main, ["resume", "--dsn", dsn, "q"])
    assert not_paused.exit_code == 0 and not_paused.stdout.strip() == "queue q was not paused"
    assert client.lease("q", "w") is not None


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_and_resume_bad_queue_name(runner, dsn, command):
    result = runner.invoke(main, [command, "--dsn", dsn, "bad name!"])
    assert result.exit_code == USAGE
    _one_line_error(result, "queue_name")


# -- limits -------------------------------------------------------------------------------------


def test_limits_set_each_limit_and_keep_the_other(runner, dsn, client):
    both = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--max-running", "5", "--rate", "100/1m"])
    assert both.exit_code == 0, both.output
    assert both.stdout.strip() == "queue q: max_running=5 rate=100/1m"
    assert _limits(client, "q") == (5, 100, timedelta(minutes=1))

    rate_only = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--rate", "5/s"])
    assert rate_only.stdout.strip() == "queue q: max_running=5 rate=5/1s"
    assert _limits(client, "q") == (5, 5, timedelta(seconds=1))  # max_running kept

    running_only = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--max-running", "2"])
    assert running_only.stdout.strip() == "queue q: max_running=2 rate=5/1s"
    assert _limits(client, "q") == (2, 5, timedelta(seconds=1))  # the rate kept

    shown = runner.invoke(main, ["limits", "--dsn", dsn, "q"])
    assert shown.exit_code == 0 and shown.stdout.strip() == "queue q: max_running=2 rate=5/1s"
    assert _limits(client, "q") == (2, 5, timedelta(seconds=1))  # showing changes nothing

    as_json = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--json"])
    assert json.loads(as_json.stdout) == {
        "queue_name": "q",
        "max_running": 2,
        "rate_limit": 5,
        "rate_period": 1.0,
    }


def test_limits_clear_with_none_or_the_no_flags(runner, dsn, client):
    client.set_queue_limits("q", 3, 10, timedelta(minutes=1))
    cleared = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--no-rate"])
    assert cleared.stdout.strip() == "queue q: max_running=3 rate=none"
    assert _limits(client, "q")[:2] == (3, None)
    cleared = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--max-running", "none"])
    assert cleared.stdout.strip() == "queue q: max_running=none rate=none"
    assert _limits(client, "q")[:2] == (None, None)

    client.set_queue_limits("q", 3, 10, timedelta(minutes=1))
    both = runner.invoke(main, ["limits", "--dsn", dsn, "q", "--no-max-running", "--rate", "none"])
    assert both.exit_code == 0, both.output
    assert _limits(client, "q")[:2] == (None, None)
    client.enqueue_batch("q", [{}] * 4)
    assert len(client.lease_many("q", "w", batch_size=4)) == 4  # no limit left


def test_limits_of_a_queue_never_configured(runner, dsn):
    shown = runner.invoke(main, ["limits", "--dsn", dsn, "fresh"])
    assert shown.exit_code == 0 and shown.stdout.strip() == "queue fresh: max_running=none rate=none"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rate", "100"], ["--rate", "COUNT/PERIOD"]),
        (["--rate", "100/fortnight"], ["--rate", "period"]),
        (["--rate", "0/1m"], ["--rate", "at least 1"]),
        (["--rate", "5/0s"], ["--rate", "more than zero"]),
        (["--max-running", "0"], ["--max-running"]),
        (["--max-running", "lots"], ["--max-running"]),
        (["--max-running", "3", "--no-max-running"], ["--no-max-running"]),
        (["--rate", "5/s", "--no-rate"], ["--no-rate"]),
    ],
)
def test_limits_bad_input_is_exit_2_and_changes_nothing(runner, dsn, client, args, words):
    client.set_queue_limits("q", 7, 9, timedelta(seconds=2))
    result = runner.invoke(main, ["limits", "--dsn", dsn, "q", *args])
    assert result.exit_code == USAGE, result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert _limits(client, "q") == (7, 9, timedelta(seconds=2))


def test_limits_bad_queue_name(runner, dsn):
    result = runner.invoke(main, ["limits", "--dsn", dsn, "bad name!", "--max-running", "1"])
    assert result.exit_code == USAGE
    _one_line_error(result, "queue_name")


# -- stats ----------------------------------------------------------------------------------------


def test_stats_shows_paused_queues_and_limits(runner, dsn, client):
    client.enqueue("free", {})
    client.enqueue("held", {})
    client.pause_queue("held")
    client.set_queue_limits("slow", 5, 100, timedelta(minutes=1))
    rows = json.loads(runner.invoke(main, ["stats", "--dsn", dsn, "--json"]).stdout)
    by_name = {r["queue_name"]: r for r in rows}
    assert set(by_name) == {"free", "held", "slow"}
    assert by_name["held"]["paused"] is True and by_name["free"]["paused"] is False
    assert (
        by_name["slow"]["max_running"],
        by_name["slow"]["rate_limit"],
        by_name["slow"]["rate_period"],
    ) == (
        5,
        100,
        60.0,
    )
    assert (
        by_name["free"]["max_running"],
        by_name["free"]["rate_limit"],
        by_name["free"]["rate_period"],
    ) == (
        None,
        None,
        None,
    )

    table = runner.invoke(main, ["stats", "--dsn", dsn])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert "paused" in lines[0] and "max running" in lines[0] and "rate" in lines[0]
    held = next(line for line in lines if line.startswith("held"))
    slow = next(line for line in lines if line.startswith("slow"))
    free = next(line for line in lines if line.startswith("free"))
    assert "paused" in held.split() and "paused" not in free.split() and "paused" not in slow.split()
    assert slow.split()[-2:] == ["5", "100/1m"]
    assert free.split()[-2:] == ["-", "-"]


def test_stats_without_the_right_to_read_settings_still_shows_counts_and_paused(runner, dsn, conn, client):
    """A login holding only openqueue_worker may call oq_stats but not oq_queue_settings."""
    roles = {r for (r,) in conn.execute("select rolname from pg_roles where rolname like 'openqueue_%'")}
    # The test server's installing role is a superuser, so contract section 6 has it create the roles.
    assert "openqueue_worker" in roles, f"the installer did not create openqueue_worker: {sorted(roles)}"
    login = "oq_cli_flow_worker"
    conn.execute(f"drop role if exists {login}")
    conn.execute(f"create role {login} login password 'pw' in role openqueue_worker")
    try:
        client.enqueue("q", {})
        client.pause_queue("q")
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(dsn)
        parts.update(user=login, password="pw")
        worker_dsn = make_conninfo(**parts)
        result = runner.invoke(main, ["stats", "--dsn", worker_dsn, "--json"])
        assert result.exit_code == 0, result.output
        (row,) = json.loads(result.stdout)
        assert row["queue_name"] == "q" and row["paused"] is True
        assert "max_running" not in row  # unknown to this role, not "no limit"
        table = runner.invoke(main, ["stats", "--dsn", worker_dsn])
        assert table.exit_code == 0 and "max running" not in table.stdout
    finally:
        conn.execute(f"drop owned by {login}")
        conn.execute(f"drop role {login}")


# -- worker ----------------------------------------------------------------------------------------


def test_worker_help_has_tick_interval(runner):
    result = runner.invoke(main, ["worker", "--help"])
    assert result.exit_code == 0
    assert "--tick-interval" in result.stdout and "default: 1.0" in " ".join(result.stdout.split())


def test_worker_refuses_a_negative_tick_interval(runner, dsn):
    result = runner.invoke(main, ["worker", "--dsn", dsn, "--queue", "q=json:loads", "--tick-interval", "-1"])
    assert result.exit_code == USAGE
    assert "--tick-interval" in result.stderr


def test_help_lists_the_new_commands(runner):
    result = runner.invoke(main, ["--help"])
    for command in ("schedule", "pause", "resume", "limits"):
        assert f"\n  {command} " in result.stdout, command


def _worker_run(dsn: str, conn, tick_interval: str, queue: str) -> str | None:
    """Run `openqueue worker --tick-interval` until the schedule's job completes (or 60 s); its status."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    openqueue = str(Path(sys.executable).with_name("openqueue"))
    argv = [openqueue, "worker", "--dsn", dsn, "--queue", f"{queue}=examples.tasks:send_email"]
    argv += ["--tick-interval", tick_interval, "--poll-interval", "0.2"]
    status = None
    with subprocess.Popen(argv, cwd=repo, stderr=subprocess.PIPE, text=True) as worker:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = conn.execute(
                    "select status from openqueue.jobs where queue_name = %s", [queue]
                ).fetchone()
                status = row[0] if row else None
                if status == "completed":
                    break
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return status


def test_worker_tick_interval_fires_a_due_schedule(dsn, conn, client):
    client.schedule("digest", "*/15 * * * *", "digest", {"to": "ada@example.com"})
    # As if a slot had come and nobody ticked yet: the worker's tick fires it.
    conn.execute(
        "update openqueue.cron_schedules set next_run_at = date_trunc('hour', now()) - interval '1 hour'"
    )
    assert _worker_run(dsn, conn, "0.2", "digest") == "completed"
    (job,) = client.list_jobs("digest")
    assert job.idempotency_key.startswith("schedule:digest:") and job.result == {"sent_to": "ada@example.com"}
    (schedule,) = client.list_schedules()
    assert schedule.last_run_at == job.run_at
