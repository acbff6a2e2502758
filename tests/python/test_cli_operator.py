"""The operator's CLI: jobs, dead, replay, cancel, purge, configure, stats; durations, DSNs, errors."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from openqueue_py import Client, JobState
from openqueue_py.cli import EXIT_CODES, main
from openqueue_py.cli._common import format_duration, parse_duration

NOT_FOUND = 5


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _dead_job(client: Client, queue: str, error: str = "boom") -> int:
    """A job that failed once with max_attempts 1: dead, with ``error`` recorded."""
    job_id = client.enqueue(queue, {"n": 1}, max_attempts=1)
    leased = client.lease(queue, "w")
    assert leased is not None and leased.job.id == job_id
    assert client.nack(job_id, leased.lease_token, error) == "dead"
    return job_id


def _age(conn: psycopg.Connection, job_id: int, seconds: int) -> None:
    """Make a job look ``seconds`` old (created_at is not writable through the view: use the tables)."""
    for table in ("live_jobs", "finished_jobs"):
        conn.execute(
            f"update openqueue.{table} set created_at = now() - make_interval(secs => %s) where id = %s",
            (seconds, job_id),
        )


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("2.5", 2.5),
        ("90s", 90),
        ("15m", 900),
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("250ms", 0.25),
        ("2w", 14 * 86400),
        ("1d2h3m4s", 93784),
        ("1.5h", 5400),
    ],
)
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7x", "s", "1h1h", "-5s", "5 days", "1h-30m", "abc", "1e3"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (0.25, 4.5, 42, 185, 7800, 7 * 86400 + 3600)] == [
        "250ms",
        "4.5s",
        "42s",
        "3m05s",
        "2h10m",
        "7d1h",
    ]


def test_purge_takes_durations(runner, dsn, client, conn):
    job_id = client.enqueue("q", {})
    client.cancel(job_id)
    conn.execute("update openqueue.finished_jobs set finished_at = now() - interval '8 days'")
    kept = runner.invoke(main, ["purge", "--dsn", dsn, "--older-than", "9d"])
    assert kept.exit_code == 0, kept.output
    assert kept.stdout.strip() == "0"
    purged = runner.invoke(main, ["purge", "--dsn", dsn, "--older-than", "7d"])
    assert purged.exit_code == 0, purged.output
    assert purged.stdout.strip() == "1"
    assert client.get_job(job_id) is None


@pytest.mark.parametrize("value", ["7x", "seven days", "1h-5m", "-5s"])
def test_bad_durations_are_usage_errors(runner, dsn, client, value):
    job_id = client.enqueue("q", {})
    client.cancel(job_id)
    result = runner.invoke(main, ["purge", "--dsn", dsn, f"--older-than={value}"])
    assert result.exit_code == 2
    assert "not a duration" in result.stderr
    assert client.get_job(job_id) is not None  # nothing deleted


def test_enqueue_delay_takes_a_duration(runner, dsn, client, conn):
    result = runner.invoke(main, ["enqueue", "--dsn", dsn, "--queue", "later", "--delay", "1h30m"])
    assert result.exit_code == 0, result.output
    (delta,) = conn.execute("select %s - now()", (client.get_job(int(result.stdout)).run_at,)).fetchone()
    assert 5390 < delta.total_seconds() <= 5400


# -- DSN and connection errors -----------------------------------------------------------


def test_no_dsn_is_a_usage_error(runner):
    result = runner.invoke(main, ["stats"], env={"OPENQUEUE_DSN": None, "DATABASE_URL": None})
    assert result.exit_code == 2
    assert "OPENQUEUE_DSN" in result.stderr and "DATABASE_URL" in result.stderr


def test_database_url_is_read_when_openqueue_dsn_is_not_set(runner, dsn, client):
    client.enqueue("from_env", {})
    result = runner.invoke(main, ["stats", "--json"], env={"OPENQUEUE_DSN": None, "DATABASE_URL": dsn})
    assert result.exit_code == 0, result.output
    assert [row["queue_name"] for row in json.loads(result.stdout)] == ["from_env"]


def test_openqueue_dsn_wins_over_database_url(runner, dsn, empty_dsn):
    result = runner.invoke(main, ["stats", "--json"], env={"OPENQUEUE_DSN": dsn, "DATABASE_URL": empty_dsn})
    assert result.exit_code == 0, result.output


def test_malformed_dsn_is_a_usage_error(runner):
    result = runner.invoke(main, ["stats", "--dsn", "host=localhost port"])
    assert result.exit_code == 2
    assert result.stderr.startswith("openqueue: the DSN is not valid")
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_server_is_exit_3(runner, dsn):
    bad = make_conninfo(dsn, host="127.0.0.1", port="1", connect_timeout="2")
    result = runner.invoke(main, ["jobs", "list", "--dsn", bad])
    assert result.exit_code == 3
    assert result.stderr.startswith("openqueue: cannot connect to PostgreSQL")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list"],
        ["jobs", "show", "1"],
        ["dead", "list"],
        ["dead", "replay", "--all", "--yes"],
        ["replay", "1"],
        ["cancel", "1"],
        ["configure", "q", "--max-attempts", "3"],
        ["purge", "--older-than", "1d"],
    ],
)
def test_missing_schema_is_exit_4_with_the_hint(runner, empty_dsn, args):
    result = runner.invoke(main, [*args, "--dsn", empty_dsn])
    assert result.exit_code == 4, result.output
    assert "run `openqueue install`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_database_error_is_one_line_and_verbose_gives_the_detail(runner, dsn):
    args = ["enqueue", "--dsn", dsn, "--queue", "q", "--max-attempts", "0"]
    short = runner.invoke(main, args)
    assert short.exit_code == 2
    assert len(short.stderr.strip().splitlines()) == 1
    assert "max_attempts" in short.stderr
    assert "CONTEXT" not in short.stderr and "Traceback" not in short.stderr

    verbose = runner.invoke(main, ["--verbose", *args])
    assert verbose.exit_code == 2
    assert "SQLSTATE: 22023" in verbose.stderr
    assert "CONTEXT" in verbose.stderr
    assert "Traceback" in verbose.stderr


def test_help_documents_every_exit_status(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning[:30]}" in " ".join(result.stdout.split("\n")), code
    for command in ("install", "enqueue", "worker", "stats", "jobs", "dead", "cancel", "purge"):
        assert command in result.stdout
    for command in ("configure", "dashboard", "demo", "replay"):
        assert command in result.stdout


def test_dashboard_help(runner):
    result = runner.invoke(main, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "--allow-actions" in result.stdout and "--port" in result.stdout and "--host" in result.stdout


# -- jobs list / show ----------------------------------------------------------------------


def test_jobs_list_json_and_filters(runner, dsn, client, conn, newest_first):
    a1 = client.enqueue("alpha", {"i": 1})
    a2 = client.enqueue("alpha", {"i": 2})
    b1 = client.enqueue("beta", {"i": 3})
    client.cancel(a2)
    _age(conn, a1, 3600)

    def ids(*args: str) -> list[int]:
        result = runner.invoke(main, ["jobs", "list", "--dsn", dsn, "--json", *args])
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    assert ids() == newest_first(a1, a2, b1)
    assert ids("--queue", "alpha") == [a2, a1]
    assert ids("--state", "cancelled") == [a2]
    assert ids("--state", "pending", "--queue", "alpha") == [a1]
    assert ids("--older-than", "30m") == [a1]
    assert ids("--newer-than", "30m") == newest_first(a2, b1)
    assert ids("--queue", "nobody") == []

    rows = json.loads(runner.invoke(main, ["jobs", "list", "--dsn", dsn, "--json", "--queue", "beta"]).stdout)
    assert rows[0]["payload"] == {"i": 3}
    assert rows[0]["status"] == "pending"
    assert "lease_token" not in rows[0]
    assert set(rows[0]) >= {"id", "queue_name", "created_at", "run_at", "errors", "result", "attempts"}


def test_jobs_list_paging(runner, dsn, client):
    ids = client.enqueue_batch("paged", [{"n": n} for n in range(7)])
    newest_first = sorted(ids, reverse=True)

    def page(*args: str) -> list[int]:
        result = runner.invoke(main, ["jobs", "list", "--dsn", dsn, "--json", *args])
        assert result.exit_code == 0, result.output
        return [row["id"] for row in json.loads(result.stdout)]

    assert page("--limit", "3") == newest_first[:3]
    assert page("--limit", "3", "--offset", "3") == newest_first[3:6]
    assert page("--limit", "3", "--after-id", str(newest_first[2])) == newest_first[3:6]
    assert page("--limit", "3", "--after-id", str(newest_first[5])) == newest_first[6:]

    table = runner.invoke(main, ["jobs", "list", "--dsn", dsn, "--limit", "3"])
    assert table.exit_code == 0, table.output
    assert "3 of 7 jobs shown" in table.stdout
    assert f"next page: --after-id {newest_first[2]}" in table.stdout


def test_jobs_list_table(runner, dsn, client):
    job_id = client.enqueue("tabled", {"to": "ada@example.com"}, priority=4)
    result = runner.invoke(main, ["jobs", "list", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith(str(job_id)))
    assert "tabled" in line and "pending" in line and "4" in line and "0/5" in line
    assert '{"to": "ada@example.com"}' in line


def test_jobs_list_empty(runner, dsn):
    result = runner.invoke(main, ["jobs", "list", "--dsn", dsn])
    assert result.exit_code == 0
    assert "no jobs match" in result.stdout


@pytest.mark.parametrize(
    "bad", [["--state", "zombie"], ["--limit", "0"], ["--offset", "-1"], ["--after-id", "x"]]
)
def test_jobs_list_bad_options(runner, dsn, bad):
    result = runner.invoke(main, ["jobs", "list", "--dsn", dsn, *bad])
    assert result.exit_code == 2
    if bad[0] == "--state":
        assert "zombie" in result.stderr and "pending" in result.stderr


def test_piped_tables_are_not_cut(runner, dsn, client):
    queue = "q" * 120  # the longest sensible queue name, in a table far wider than 80 columns
    job_id = _dead_job(client, queue, "ValueError: " + "x" * 150)
    for args in (["stats"], ["jobs", "list"], ["dead", "list"]):
        result = runner.invoke(main, [*args, "--dsn", dsn])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert any(queue in line for line in lines), args  # whole, on one line
        assert all(line == line.rstrip() for line in lines), args  # no padding left at line ends
        assert max(len(line) for line in lines) > 160, args  # far beyond 80 columns
    dead = runner.invoke(main, ["dead", "list", "--dsn", dsn]).stdout
    assert "ValueError: " + "x" * 150 in dead
    assert str(job_id) in dead


def test_jobs_show(runner, dsn, client):
    job_id = client.enqueue("shown", {"to": "ada@example.com", "n": [1, 2]}, max_attempts=3)
    trace = "Traceback (most recent call last):\n  File \"app.py\", line 3, in handle\nKeyError: 'to'"
    leased = client.lease("shown", "worker-7")
    client.nack(job_id, leased.lease_token, f"KeyError: 'to'\n\n{trace}", retry_in=timedelta(0))
    leased = client.lease("shown", "worker-7")
    client.ack(job_id, leased.lease_token, {"sent": True, "id": "[bold]x[/]"})

    result = runner.invoke(main, ["jobs", "show", str(job_id), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        f"id               {job_id}",
        "queue            shown",
        "state            completed",
        "attempts         2 of 3",
        "leased by        worker-7",
        '"to": "ada@example.com"',
        '"sent": true',
        '"id": "[bold]x[/]"',  # printed as is: no rich markup interpreted
        "errors (1):",
        "attempt 1 at ",
        'File "app.py", line 3, in handle',
        "KeyError: 'to'",
    ):
        assert expected in out, expected
    record = client.get_job(job_id)
    assert record.created_at.isoformat(timespec="milliseconds") in out
    assert record.finished_at.isoformat(timespec="milliseconds") in out

    as_json = runner.invoke(main, ["jobs", "show", str(job_id), "--dsn", dsn, "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.stdout)
    assert data["id"] == job_id and data["status"] == "completed"
    assert data["result"] == {"sent": True, "id": "[bold]x[/]"}
    assert data["errors"][0]["error"].endswith("KeyError: 'to'")
    assert data["errors"][0]["attempt"] == 1
    assert "lease_token" not in data


def test_jobs_show_unknown_id(runner, dsn):
    result = runner.invoke(main, ["jobs", "show", "999", "--dsn", dsn])
    assert result.exit_code == NOT_FOUND
    assert result.stderr.strip() == "openqueue: job 999 does not exist"
    assert result.stdout == ""
    as_json = runner.invoke(main, ["jobs", "show", "999", "--dsn", dsn, "--json"])
    assert as_json.exit_code == NOT_FOUND
    not_a_number = runner.invoke(main, ["jobs", "show", "abc", "--dsn", dsn])
    assert not_a_number.exit_code == 2


# -- dead list / replay ----------------------------------------------------------------------


def test_dead_list(runner, dsn, client, newest_first):
    dead = _dead_job(client, "mail", "SMTPError: 550 mailbox unavailable\n\nTraceback ...")
    client.enqueue("mail", {})  # pending: not listed
    other = _dead_job(client, "sms")
    result = runner.invoke(main, ["dead", "list", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert "SMTPError: 550 mailbox unavailable" in result.stdout
    assert "Traceback" not in result.stdout  # the first line of the last error only
    assert "2 of 2 jobs shown" in result.stdout

    rows = json.loads(runner.invoke(main, ["dead", "list", "--dsn", dsn, "--json"]).stdout)
    assert [row["id"] for row in rows] == newest_first(dead, other)
    assert {row["status"] for row in rows} == {"dead"}
    only_mail = json.loads(
        runner.invoke(main, ["dead", "list", "--dsn", dsn, "--json", "--queue", "mail"]).stdout
    )
    assert [row["id"] for row in only_mail] == [dead]


def test_dead_replay_by_id(runner, dsn, client):
    first, second = _dead_job(client, "r"), _dead_job(client, "r")
    result = runner.invoke(main, ["dead", "replay", str(first), str(second), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert f"replayed job {first}" in result.stdout and f"replayed job {second}" in result.stdout
    assert client.get_job(first).status is JobState.PENDING
    assert client.get_job(second).status is JobState.PENDING


def test_dead_replay_unknown_and_wrong_state(runner, dsn, client):
    dead = _dead_job(client, "r")
    pending = client.enqueue("r", {})
    missing = runner.invoke(main, ["dead", "replay", "999999", "--dsn", dsn])
    assert missing.exit_code == NOT_FOUND
    assert "job 999999 does not exist" in missing.stderr

    mixed = runner.invoke(main, ["dead", "replay", str(dead), str(pending), "999999", "--dsn", dsn])
    assert mixed.exit_code == 1  # a job in the wrong state outranks a missing one
    assert f"replayed job {dead}" in mixed.stdout
    assert f"job {pending} is pending, not dead or cancelled" in mixed.stderr
    assert "job 999999 does not exist" in mixed.stderr
    assert client.get_job(dead).status is JobState.PENDING


def test_dead_replay_bulk_with_yes(runner, dsn, client):
    dead = [_dead_job(client, "bulk") for _ in range(3)]
    elsewhere = _dead_job(client, "other")
    result = runner.invoke(main, ["dead", "replay", "--queue", "bulk", "--all", "--yes", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "replayed 3 jobs"
    assert all(client.get_job(job_id).status is JobState.PENDING for job_id in dead)
    assert client.get_job(elsewhere).status is JobState.DEAD

    again = runner.invoke(main, ["dead", "replay", "--queue", "bulk", "--yes", "--dsn", dsn])
    assert again.exit_code == 0
    assert "no dead jobs of queue bulk" in again.stdout

    every_queue = runner.invoke(main, ["dead", "replay", "--all", "--yes", "--dsn", dsn])
    assert every_queue.exit_code == 0, every_queue.output
    assert every_queue.stdout.strip() == "replayed 1 job"
    assert client.get_job(elsewhere).status is JobState.PENDING


def test_dead_replay_bulk_age_filter(runner, dsn, client, conn):
    old, new = _dead_job(client, "aged"), _dead_job(client, "aged")
    _age(conn, old, 7200)
    result = runner.invoke(
        main, ["dead", "replay", "--queue", "aged", "--older-than", "1h", "--yes", "--dsn", dsn]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "replayed 1 job"
    assert client.get_job(old).status is JobState.PENDING
    assert client.get_job(new).status is JobState.DEAD


def test_dead_replay_prompt_refused_writes_nothing(runner, dsn, client):
    dead = [_dead_job(client, "ask") for _ in range(2)]
    for answer in ("n\n", "\n", ""):  # no, the default, and no answer at all (end of input)
        result = runner.invoke(
            main, ["dead", "replay", "--queue", "ask", "--all", "--dsn", dsn], input=answer
        )
        assert result.exit_code == 1, (answer, result.output)
        assert "replay 2 dead jobs of queue ask?" in result.stderr
        assert "nothing replayed" in result.stderr
        assert result.stdout == ""
        assert all(client.get_job(job_id).status is JobState.DEAD for job_id in dead)

    accepted = runner.invoke(main, ["dead", "replay", "--queue", "ask", "--dsn", dsn], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout.strip() == "replayed 2 jobs"
    assert all(client.get_job(job_id).status is JobState.PENDING for job_id in dead)


@pytest.mark.parametrize(
    "args",
    [
        [],  # nothing to replay
        ["1", "--all"],  # ids and bulk
        ["1", "--queue", "q"],
        ["1", "--older-than", "1d"],  # age filters are for bulk
        ["--all", "--older-than", "soon"],
    ],
)
def test_dead_replay_usage_errors(runner, dsn, client, args):
    dead = _dead_job(client, "q")
    result = runner.invoke(main, ["dead", "replay", "--dsn", dsn, "--yes", *args])
    assert result.exit_code == 2
    assert client.get_job(dead).status is JobState.DEAD


# -- replay / cancel -------------------------------------------------------------------------------


def test_replay_unknown_job_says_it_does_not_exist(runner, dsn):
    result = runner.invoke(main, ["replay", "999", "--dsn", dsn])
    assert result.exit_code == NOT_FOUND
    assert result.stderr.strip() == "openqueue: job 999 does not exist"
    assert "not dead or cancelled" not in result.stderr


def test_cancel_several_and_unknown(runner, dsn, client):
    a, b = client.enqueue("c", {}), client.enqueue("c", {})
    result = runner.invoke(main, ["cancel", str(a), str(b), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    assert f"cancelled job {a}" in result.stdout and f"cancelled job {b}" in result.stdout
    assert client.get_job(a).status is JobState.CANCELLED

    again = runner.invoke(main, ["cancel", str(a), "--dsn", dsn])
    assert again.exit_code == 1
    assert f"job {a} is cancelled, not pending, failed or processing" in again.stderr
    missing = runner.invoke(main, ["cancel", "424242", "--dsn", dsn])
    assert missing.exit_code == NOT_FOUND
    assert "job 424242 does not exist" in missing.stderr
    nothing = runner.invoke(main, ["cancel", "--dsn", dsn])
    assert nothing.exit_code == 2


# -- configure ---------------------------------------------------------------------------------------


def test_configure(runner, dsn, client, conn):
    result = runner.invoke(
        main,
        [
            "configure",
            "conf",
            "--dsn",
            dsn,
            "--max-attempts",
            "2",
            "--lease-seconds",
            "2m",
            "--backoff-base",
            "200ms",
            "--backoff-max",
            "1h30m",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "configured queue conf" in result.stdout and "max_attempts=2" in result.stdout
    row = conn.execute(
        "select max_attempts, lease_seconds, backoff_base, backoff_max from openqueue.queues"
        " where queue_name = 'conf'"
    ).fetchone()
    assert row == (2, 120, timedelta(milliseconds=200), timedelta(hours=1, minutes=30))

    partial = runner.invoke(main, ["configure", "conf", "--dsn", dsn, "--lease", "45"])
    assert partial.exit_code == 0, partial.output
    row = conn.execute("select max_attempts, lease_seconds from openqueue.queues where queue_name = 'conf'")
    assert row.fetchone() == (2, 45)  # what was not given is unchanged
    assert client.get_job(client.enqueue("conf", {})).max_attempts == 2


@pytest.mark.parametrize(
    "args",
    [
        [],  # nothing to set
        ["--max-attempts", "0"],
        ["--lease-seconds", "1.5s"],
        ["--lease-seconds", "0"],
        ["--backoff-base", "0"],
        ["--backoff-max", "soon"],
    ],
)
def test_configure_bad_input(runner, dsn, conn, args):
    result = runner.invoke(main, ["configure", "conf", "--dsn", dsn, *args])
    assert result.exit_code == 2, result.output
    assert conn.execute("select count(*) from openqueue.queues where queue_name = 'conf'").fetchone()[0] == 0


def test_configure_bad_queue_name_is_refused_by_the_database(runner, dsn, conn):
    result = runner.invoke(main, ["configure", "bad name", "--dsn", dsn, "--max-attempts", "3"])
    assert result.exit_code == 2
    assert "queue_name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- stats -------------------------------------------------------------------------------------------


def test_stats_table_and_oldest_due_age(runner, dsn, client, conn):
    job_id = client.enqueue("waiting", {})
    conn.execute("update openqueue.jobs set run_at = now() - interval '5 minutes' where id = %s", (job_id,))
    result = runner.invoke(main, ["stats", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("waiting"))
    assert line.split()[1] == "1"  # pending
    assert "5m0" in line and "ago" in line


def test_stats_watch(runner, dsn, client):
    client.enqueue("watched", {})
    as_json = runner.invoke(
        main, ["stats", "--dsn", dsn, "--watch", "--json", "--interval", "50ms", "--count", "3"]
    )
    assert as_json.exit_code == 0, as_json.output
    lines = as_json.stdout.strip().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)[0]["queue_name"] == "watched" for line in lines)

    table = runner.invoke(main, ["stats", "--dsn", dsn, "--watch", "--interval", "0.05", "--count", "2"])
    assert table.exit_code == 0, table.output
    assert table.stdout.count("openqueue stats at ") == 2
    assert table.stdout.count("watched") == 2

    bad = runner.invoke(main, ["stats", "--dsn", dsn, "--watch", "--interval", "0s"])
    assert bad.exit_code == 2
