"""Recurring schedules (contract section 7): oq_schedule, oq_unschedule,
oq_tick and the openqueue.schedules view, called through SQL.

Time is moved with oq_tick(as_of => ...) and, as the owner, by updating
next_run_at in the internal table; nothing sleeps.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

VIEW_COLUMNS = [
    "schedule_name",
    "cron",
    "queue_name",
    "payload",
    "priority",
    "max_attempts",
    "timezone",
    "next_run_at",
    "last_run_at",
    "created_at",
]


def schedule(conn: psycopg.Connection, **args: object) -> None:
    types = {
        "schedule_name": "text",
        "cron": "text",
        "queue_name": "text",
        "payload": "jsonb",
        "priority": "integer",
        "max_attempts": "integer",
        "timezone": "text",
    }
    sent = {k: Jsonb(v) if k == "payload" and v is not None else v for k, v in args.items()}
    arguments = ", ".join(f"{k} => %({k})s::{types[k]}" for k in sent)
    conn.execute(f"select openqueue.oq_schedule({arguments})", sent)


def tick(conn: psycopg.Connection, as_of: datetime | None = None) -> int:
    if as_of is None:
        return conn.execute("select openqueue.oq_tick()").fetchone()[0]
    return conn.execute("select openqueue.oq_tick(as_of => %s::timestamptz)", (as_of,)).fetchone()[0]


def row(conn: psycopg.Connection, name: str) -> dict[str, object] | None:
    cursor = conn.execute("select * from openqueue.schedules where schedule_name = %s", (name,))
    found = cursor.fetchone()
    if found is None:
        return None
    return dict(zip([c.name for c in cursor.description], found, strict=True))


def jobs(conn: psycopg.Connection, queue: str | None = None) -> list[tuple]:
    return conn.execute(
        "select queue_name, payload, priority, max_attempts, run_at, idempotency_key, status"
        " from openqueue.jobs where %(q)s::text is null or queue_name = %(q)s order by run_at, id",
        {"q": queue},
    ).fetchall()


def cron_next(conn: psycopg.Connection, cron: str, after: datetime, timezone: str = "UTC") -> datetime:
    return conn.execute("select openqueue.oq_cron_next(%s, %s, %s)", (cron, after, timezone)).fetchone()[0]


def key(name: str, slot: datetime) -> str:
    return f"schedule:{name}:{int(slot.timestamp())}"


def set_next_run_at(conn: psycopg.Connection, name: str, when: datetime) -> None:
    """Move time as the owner (the internal table is the owner's)."""
    conn.execute(
        "update openqueue.cron_schedules set next_run_at = %s where schedule_name = %s", (when, name)
    )


# -- the view and oq_schedule ----------------------------------------------------------------


def test_view_has_exactly_the_contract_columns(conn):
    cursor = conn.execute("select * from openqueue.schedules limit 0")
    assert [c.name for c in cursor.description] == VIEW_COLUMNS


def test_schedule_defaults_and_first_slot_strictly_after_now(conn):
    with conn.transaction():
        schedule(conn, schedule_name="nightly", cron="0 2 * * *", queue_name="reports")
        now = conn.execute("select now()").fetchone()[0]
    got = row(conn, "nightly")
    assert got["cron"] == "0 2 * * *" and got["queue_name"] == "reports"
    assert got["payload"] == {} and got["priority"] == 0 and got["max_attempts"] is None
    assert got["timezone"] == "UTC" and got["last_run_at"] is None and got["created_at"] == now
    assert got["next_run_at"] == cron_next(conn, "0 2 * * *", now) > now


def test_schedule_every_argument_and_timezone(conn):
    with conn.transaction():
        schedule(
            conn,
            schedule_name="berlin.nightly:v1",
            cron="30 2 * * *",
            queue_name="reports",
            payload={"kind": "daily"},
            priority=7,
            max_attempts=3,
            timezone="Europe/Berlin",
        )
        now = conn.execute("select now()").fetchone()[0]
    got = row(conn, "berlin.nightly:v1")
    assert (got["payload"], got["priority"], got["max_attempts"], got["timezone"]) == (
        {"kind": "daily"},
        7,
        3,
        "Europe/Berlin",
    )
    assert got["next_run_at"] == cron_next(conn, "30 2 * * *", now, "Europe/Berlin")


def test_null_optional_arguments_mean_their_defaults(conn):
    conn.execute(
        "select openqueue.oq_schedule('s', '@hourly', 'q', payload => null, priority => null,"
        " max_attempts => null, timezone => null)"
    )
    got = row(conn, "s")
    assert (got["payload"], got["priority"], got["max_attempts"], got["timezone"]) == ({}, 0, None, "UTC")


def test_replace_changes_the_definition_and_keeps_created_and_last_run(conn):
    schedule(conn, schedule_name="s", cron="* * * * *", queue_name="q1", payload={"v": 1})
    first = row(conn, "s")
    assert tick(conn, first["next_run_at"]) == 1
    fired = row(conn, "s")
    schedule(conn, schedule_name="s", cron="*/5 * * * *", queue_name="q2", payload={"v": 2}, priority=3)
    got = row(conn, "s")
    assert (got["cron"], got["queue_name"], got["payload"], got["priority"]) == (
        "*/5 * * * *",
        "q2",
        {"v": 2},
        3,
    )
    assert got["created_at"] == first["created_at"]
    assert got["last_run_at"] == fired["last_run_at"] == first["next_run_at"]
    assert conn.execute("select count(*) from openqueue.schedules").fetchone()[0] == 1


def test_replacing_never_fires_again_a_slot_that_already_fired(conn):
    schedule(conn, schedule_name="s", cron="0 * * * *", queue_name="q")
    # A ticker ahead of the clock fired a slot three hours from now.
    ahead = row(conn, "s")["next_run_at"] + timedelta(hours=3)
    assert tick(conn, ahead) == 1
    assert row(conn, "s")["last_run_at"] == ahead
    # Replacing: the first slot after now() would be <= last_run_at; it must not come back.
    schedule(conn, schedule_name="s", cron="0 * * * *", queue_name="q", payload={"new": True})
    got = row(conn, "s")
    assert got["next_run_at"] > got["last_run_at"] == ahead
    assert got["next_run_at"] == ahead + timedelta(hours=1)
    assert tick(conn, ahead) == 0
    assert len(jobs(conn, "q")) == 1


def test_unschedule(conn):
    schedule(conn, schedule_name="s", cron="* * * * *", queue_name="q")
    assert tick(conn, row(conn, "s")["next_run_at"]) == 1
    assert conn.execute("select openqueue.oq_unschedule('s')").fetchone()[0] is True
    assert row(conn, "s") is None
    assert conn.execute("select openqueue.oq_unschedule(schedule_name => 's')").fetchone()[0] is False
    assert conn.execute("select openqueue.oq_unschedule('never-was')").fetchone()[0] is False
    # jobs it already enqueued stay
    assert len(jobs(conn, "q")) == 1
    assert tick(conn, datetime.now(UTC) + timedelta(days=1)) == 0


# -- oq_tick -------------------------------------------------------------------------------


def test_tick_enqueues_one_job_per_slot_with_the_contract_fields(conn):
    schedule(
        conn,
        schedule_name="digest",
        cron="* * * * *",
        queue_name="emails",
        payload={"to": "ops"},
        priority=5,
        max_attempts=2,
    )
    slot = row(conn, "digest")["next_run_at"]
    assert tick(conn, slot - timedelta(seconds=1)) == 0  # not due yet
    assert tick(conn, slot) == 1
    assert tick(conn, slot) == 0  # the same slot: never twice
    assert tick(conn, slot + timedelta(seconds=59)) == 0
    assert jobs(conn) == [("emails", {"to": "ops"}, 5, 2, slot, key("digest", slot), "pending")]
    got = row(conn, "digest")
    assert got["last_run_at"] == slot and got["next_run_at"] == slot + timedelta(minutes=1)
    assert tick(conn, slot + timedelta(minutes=1)) == 1
    assert [j[4] for j in jobs(conn)] == [slot, slot + timedelta(minutes=1)]


def test_idempotency_key_is_the_epoch_of_the_slot(conn):
    schedule(conn, schedule_name="k", cron="0 0 * * *", queue_name="q")
    slot = row(conn, "k")["next_run_at"]
    tick(conn, slot)
    expected = conn.execute(
        "select 'schedule:' || 'k' || ':' || extract(epoch from %s::timestamptz)::bigint", (slot,)
    ).fetchone()[0]
    assert jobs(conn)[0][5] == expected == key("k", slot)


def test_max_attempts_null_takes_the_queues_setting(conn):
    conn.execute("select openqueue.oq_configure_queue('q', max_attempts => 9)")
    schedule(conn, schedule_name="s", cron="* * * * *", queue_name="q")
    tick(conn, row(conn, "s")["next_run_at"])
    assert jobs(conn)[0][3] == 9


def test_after_downtime_only_the_latest_missed_slot_fires(conn):
    schedule(conn, schedule_name="s", cron="*/10 * * * *", queue_name="q")
    first = row(conn, "s")["next_run_at"]
    as_of = first + timedelta(hours=5, minutes=7)
    assert tick(conn, as_of) == 1
    latest = first + timedelta(hours=5)
    assert [j[4] for j in jobs(conn)] == [latest]
    got = row(conn, "s")
    assert got["last_run_at"] == latest and got["next_run_at"] == latest + timedelta(minutes=10)


def test_sparse_schedule_after_years_of_downtime(conn):
    schedule(conn, schedule_name="y", cron="0 0 29 2 *", queue_name="q")
    set_next_run_at(conn, "y", datetime(2004, 2, 29, tzinfo=UTC))
    assert tick(conn, datetime(2031, 6, 1, tzinfo=UTC)) == 1
    assert [j[4] for j in jobs(conn)] == [datetime(2028, 2, 29, tzinfo=UTC)]
    assert row(conn, "y")["next_run_at"] == datetime(2032, 2, 29, tzinfo=UTC)


def test_latest_slot_in_a_timezone_across_fall_back(conn):
    schedule(conn, schedule_name="b", cron="30 2 * * *", queue_name="q", timezone="Europe/Berlin")
    set_next_run_at(conn, "b", datetime(2024, 10, 20, 0, 30, tzinfo=UTC))
    # Between the two 02:30s of 2024-10-27: the first one (00:30 UTC) is the latest slot.
    assert tick(conn, datetime(2024, 10, 27, 1, 40, tzinfo=UTC)) == 1
    assert [j[4] for j in jobs(conn)] == [datetime(2024, 10, 27, 0, 30, tzinfo=UTC)]
    assert row(conn, "b")["next_run_at"] == datetime(2024, 10, 28, 1, 30, tzinfo=UTC)


def test_slot_in_the_past_is_due_now_and_notifies(conn, dsn):
    schedule(conn, schedule_name="s", cron="* * * * *", queue_name="wake-me")
    set_next_run_at(conn, "s", datetime.now(UTC) - timedelta(minutes=3, seconds=30))
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen openqueue")
        assert tick(conn) == 1
        payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert payloads == ["wake-me"]
    leased = conn.execute("select id from openqueue.oq_lease('wake-me', 'w1')").fetchall()
    assert len(leased) == 1


def test_each_schedule_fires_for_its_own_slot(conn):
    schedule(conn, schedule_name="a", cron="* * * * *", queue_name="q")
    schedule(conn, schedule_name="b", cron="0 * * * *", queue_name="q")
    schedule(conn, schedule_name="c", cron="0 0 1 1 *", queue_name="q")
    base = row(conn, "b")["next_run_at"]
    assert tick(conn, base) == 2  # a and b; c not yet
    assert {j[5] for j in jobs(conn)} == {key("a", base), key("b", base)}


def test_a_recreated_schedule_does_not_enqueue_a_slot_again(conn):
    schedule(conn, schedule_name="s", cron="0 * * * *", queue_name="q")
    slot = row(conn, "s")["next_run_at"]
    assert tick(conn, slot) == 1
    conn.execute("select openqueue.oq_unschedule('s')")
    schedule(conn, schedule_name="s", cron="0 * * * *", queue_name="q")
    set_next_run_at(conn, "s", slot)
    # the idempotency key is the backstop: nothing inserted, nothing counted
    assert tick(conn, slot) == 0
    assert len(jobs(conn)) == 1
    assert row(conn, "s")["next_run_at"] == slot + timedelta(hours=1)


def test_a_payload_the_queue_no_longer_accepts_skips_the_slot_without_blocking_others(conn):
    schedule(conn, schedule_name="big", cron="* * * * *", queue_name="small", payload={"x": "y" * 100})
    schedule(conn, schedule_name="ok", cron="* * * * *", queue_name="other")
    conn.execute("select openqueue.oq_set_queue_max_payload('small', 10)")
    slot = row(conn, "ok")["next_run_at"]
    assert tick(conn, slot) == 1
    assert [j[0] for j in jobs(conn)] == ["other"]
    assert row(conn, "big")["next_run_at"] == slot + timedelta(minutes=1)
    assert row(conn, "big")["last_run_at"] is None


def test_tick_reads_only_due_schedules_through_the_index(conn):
    conn.execute(
        "select openqueue.oq_schedule('s' || g, '0 3 * * *', 'q') from generate_series(1, 1000) as g"
    )

    def scans() -> tuple[int, int]:
        conn.execute("select pg_stat_force_next_flush()")
        conn.execute("select pg_stat_clear_snapshot()")
        return conn.execute(
            "select seq_scan, idx_scan from pg_stat_user_tables"
            " where relid = 'openqueue.cron_schedules'::regclass"
        ).fetchone()

    before = scans()
    assert tick(conn) == 0
    after = scans()
    assert after[0] == before[0], "oq_tick scanned the whole schedules table"
    assert after[1] > before[1]


def test_concurrent_tickers_enqueue_each_slot_exactly_once(conn, dsn):
    names = [f"c{i}" for i in range(5)]
    for name in names:
        schedule(conn, schedule_name=name, cron="* * * * *", queue_name="q")
    base = row(conn, "c0")["next_run_at"]
    rounds, threads = 25, 8
    barrier = threading.Barrier(threads)
    counts: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def ticker(index: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                for r in range(rounds):
                    barrier.wait(timeout=60)
                    # some tickers a little later in the same minute: same slot
                    as_of = base + timedelta(minutes=r, seconds=index % 3)
                    n = tick(own, as_of)
                    with lock:
                        counts.append(n)
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=ticker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    expected = len(names) * rounds
    assert sum(counts) == expected
    found = jobs(conn)
    assert len(found) == expected
    assert len({j[5] for j in found}) == expected
    assert {j[5] for j in found} == {
        key(n, base + timedelta(minutes=r)) for n in names for r in range(rounds)
    }


# -- bad input -----------------------------------------------------------------------------

BAD_SCHEDULE = [
    ({"schedule_name": None}, "22004", "schedule_name"),
    ({"schedule_name": ""}, "22023", "schedule_name"),
    ({"schedule_name": "x" * 129}, "22023", "schedule_name"),
    ({"schedule_name": "has space"}, "22023", "schedule_name"),
    ({"schedule_name": "semi;colon"}, "22023", "schedule_name"),
    ({"cron": None}, "22004", "cron"),
    ({"cron": ""}, "22023", "cron"),
    ({"cron": "* * * *"}, "22023", "cron"),
    ({"cron": "60 * * * *"}, "22023", "cron"),
    ({"queue_name": None}, "22004", "queue_name"),
    ({"queue_name": "bad name"}, "22023", "queue_name"),
    ({"queue_name": "q" * 129}, "22023", "queue_name"),
    ({"max_attempts": 0}, "22023", "max_attempts"),
    ({"timezone": "Mars/Olympus"}, "22023", "timezone"),
    ({"timezone": "XYZ5"}, "22023", "timezone"),
    ({"payload": {"x": "y" * 2_000_000}}, "22023", "payload"),
]


@pytest.mark.parametrize(("change", "sqlstate", "argument"), BAD_SCHEDULE)
def test_bad_schedule_arguments(conn, change, sqlstate, argument):
    args = {"schedule_name": "s", "cron": "* * * * *", "queue_name": "q", **change}
    with pytest.raises(psycopg.Error) as caught:
        schedule(conn, **args)
    assert caught.value.sqlstate == sqlstate
    assert argument in caught.value.diag.message_primary
    assert conn.execute("select count(*) from openqueue.cron_schedules").fetchone()[0] == 0


def test_a_bad_replacement_changes_nothing(conn):
    schedule(conn, schedule_name="s", cron="* * * * *", queue_name="q")
    before = row(conn, "s")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cron"):
        schedule(conn, schedule_name="s", cron="* * * * 9", queue_name="q")
    assert row(conn, "s") == before


BAD_CRONS = [
    "",
    "   ",
    "* * * *",
    "* * * * * *",
    "60 * * * *",
    "-1 * * * *",
    "* 24 * * *",
    "* * 0 * *",
    "* * 32 * *",
    "* * * 0 *",
    "* * * 13 *",
    "* * * * 8",
    "5-1 * * * *",
    "*/0 * * * *",
    "5/15 * * * *",
    "1,,2 * * * *",
    "1- * * * *",
    "a * * * *",
    "* * * JAN *",
    "@every 5m",
    "@reboot",
    "0 0 30 2 *",
    "0 0 31 4,6,9,11 *",
    "99999999999999999999 * * * *",
]


def test_a_step_longer_than_the_range_yields_its_first_value(conn):
    after = datetime(2024, 1, 1, 10, 5, tzinfo=UTC)
    assert cron_next(conn, "*/99999999999999999999 * * * *", after) == datetime(2024, 1, 1, 11, 0, tzinfo=UTC)
    assert cron_next(conn, "10-50/45 * * * *", after) == datetime(2024, 1, 1, 10, 10, tzinfo=UTC)


@pytest.mark.parametrize("cron", BAD_CRONS)
def test_bad_cron_raises_22023_naming_cron(conn, cron):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        cron_next(conn, cron, datetime(2024, 1, 1, tzinfo=UTC))
    assert caught.value.diag.message_primary.startswith("cron ")


@pytest.mark.parametrize(
    "timezone", ["Mars/Olympus", "XYZ5", "+3", "", "Europe/Berlin/", "Europe//Berlin", "CEST"]
)
def test_unknown_timezone_raises_22023_naming_timezone(conn, timezone):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        cron_next(conn, "* * * * *", datetime(2024, 1, 1, tzinfo=UTC), timezone)
    assert caught.value.diag.message_primary.startswith("timezone ")


@pytest.mark.parametrize(
    "timezone", ["UTC", "Japan", "EST5EDT", "Etc/GMT+3", "America/Argentina/Buenos_Aires"]
)
def test_zone_names_are_accepted(conn, timezone):
    assert cron_next(conn, "0 0 * * *", datetime(2024, 1, 1, 12, tzinfo=UTC), timezone) > datetime(
        2024, 1, 1, 12, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("sql", "sqlstate", "argument"),
    [
        ("select openqueue.oq_cron_next(null, now())", "22004", "cron"),
        ("select openqueue.oq_cron_next('* * * * *', null)", "22004", "after"),
        ("select openqueue.oq_cron_next('* * * * *', 'infinity')", "22023", "after"),
        ("select openqueue.oq_cron_next('* * * * *', '-infinity', 'UTC')", "22023", "after"),
        ("select openqueue.oq_cron_next('* * * * *', '0001-12-31 BC')", "22023", "after"),
        ("select openqueue.oq_cron_next('* * * * *', '9990-01-01 00:00+00')", "22023", "after"),
        ("select openqueue.oq_unschedule(null)", "22004", "schedule_name"),
        ("select openqueue.oq_unschedule('')", "22023", "schedule_name"),
        ("select openqueue.oq_tick('infinity')", "22023", "as_of"),
    ],
)
def test_bad_arguments_of_the_other_functions(conn, sql, sqlstate, argument):
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql)
    assert caught.value.sqlstate == sqlstate
    assert argument in caught.value.diag.message_primary


# -- the README's psql example ----------------------------------------------------------------


def _readme_schedule_sql() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Schedules\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def test_readme_schedules_psql_example_runs_in_psql(psql, tmp_path, conn):
    blocks = _readme_schedule_sql()
    assert len(blocks) == 2 and "cron.schedule(" in blocks[1]  # pg_cron's is not installed here
    script = tmp_path / "schedules.sql"
    script.write_text("set timezone = 'UTC';\n" + blocks[0])
    lines = psql(None, "-f", str(script)).stdout.splitlines()
    assert "2024-04-01 00:30:00+00" in lines
    assert lines[-1] == "t"  # oq_unschedule
    assert conn.execute("select schedule_name, timezone from openqueue.schedules").fetchall() == [
        ("nightly-report", "Europe/Berlin")
    ]
