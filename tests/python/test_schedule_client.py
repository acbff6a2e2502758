"""Client and AsyncClient: schedule, unschedule, cron_next, tick (contract section 9)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from openqueue_py import AsyncClient, Client
from openqueue_py.errors import InvalidArgument


def test_client_round_trip(client: Client, conn: psycopg.Connection) -> None:
    after = datetime(2024, 3, 30, 12, tzinfo=UTC)
    assert client.cron_next("30 2 * * *", after, "Europe/Berlin") == datetime(2024, 4, 1, 0, 30, tzinfo=UTC)
    assert client.cron_next("0 0 * * *", after) == datetime(2024, 3, 31, tzinfo=UTC)
    client.schedule("s", "* * * * *", "q", {"a": 1}, priority=4, max_attempts=2, timezone="Europe/Berlin")
    row = conn.execute(
        "select cron, queue_name, payload, priority, max_attempts, timezone, next_run_at"
        " from openqueue.schedules"
    ).fetchone()
    assert row[:6] == ("* * * * *", "q", {"a": 1}, 4, 2, "Europe/Berlin")
    assert client.tick(as_of=row[6]) == 1
    assert client.tick(as_of=row[6]) == 0
    assert client.tick() == 0
    job = conn.execute("select payload, priority, max_attempts, run_at from openqueue.jobs").fetchone()
    assert job == ({"a": 1}, 4, 2, row[6])
    assert client.unschedule("s") is True
    assert client.unschedule("s") is False


def test_client_defaults_are_the_sql_defaults(client: Client, conn: psycopg.Connection) -> None:
    client.schedule("d", "@daily", "q")
    assert conn.execute(
        "select payload, priority, max_attempts, timezone from openqueue.schedules"
    ).fetchone() == (
        {},
        0,
        None,
        "UTC",
    )


def test_async_client_round_trip(dsn: str, conn: psycopg.Connection) -> None:
    async def run() -> None:
        async with AsyncClient(dsn) as client:
            await client.schedule("a", "0 * * * *", "q")
            next_run_at = conn.execute("select next_run_at from openqueue.schedules").fetchone()[0]
            assert await client.cron_next("0 * * * *", next_run_at) == next_run_at + timedelta(hours=1)
            assert await client.tick(next_run_at) == 1
            assert await client.unschedule("a") is True

    asyncio.run(run())


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda c: c.cron_next("* * * * *", datetime(2024, 1, 1)), "after"),
        (lambda c: c.cron_next("* * * * *", "2024-01-01"), "after"),
        (lambda c: c.cron_next("* * * * *", datetime(9999, 1, 1, tzinfo=UTC)), "after"),
        (lambda c: c.cron_next(None, datetime(2024, 1, 1, tzinfo=UTC)), "cron"),
        (lambda c: c.cron_next(5, datetime(2024, 1, 1, tzinfo=UTC)), "cron"),
        (lambda c: c.tick(datetime(2024, 1, 1)), "as_of"),
        (lambda c: c.schedule(None, "* * * * *", "q"), "schedule_name"),
        (lambda c: c.schedule("s", "* * * * *", "q", timezone=3), "timezone"),
        (lambda c: c.schedule("s", "* * * * *", "q", payload={"x": object()}), "payload"),
        (lambda c: c.schedule("s", "* * \x00 * *", "q"), "cron"),
        (lambda c: c.unschedule(None), "schedule_name"),
    ],
)
def test_bad_arguments_raise_before_sql(client: Client, call, argument) -> None:
    with pytest.raises(InvalidArgument, match=argument) as info:
        call(client)
    assert isinstance(info.value, ValueError)


def test_sql_errors_come_back_unchanged(client: Client) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cron"):
        client.schedule("s", "61 * * * *", "q")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="timezone"):
        client.cron_next("* * * * *", datetime(2024, 1, 1, tzinfo=UTC), "Mars/Olympus")
