"""``openqueue schedule``, ``openqueue pause``, ``openqueue resume`` and ``openqueue limits``.

Schedules (contract section 7) are read from ``openqueue.schedules``; a
schedule name that names none is exit status 5, like an unknown job id.
Flow control (contract section 8): ``oq_set_queue_limits`` sets BOTH limits
exactly, so ``limits`` reads the current ones first (``oq_queue_settings``)
and keeps the limit it is not told about.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import click
import psycopg

from ..client import Client
from ..models import QueueSettings
from ._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    age,
    console,
    dsn_option,
    echo_json,
    emit,
    fail,
    format_period,
    json_option,
    parse_duration,
    reported,
    table,
)

# -- rates ----------------------------------------------------------------------------

_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S.*?)\s*")
_UNIT_ONLY = {"ms": "1ms", "s": "1s", "m": "1m", "h": "1h", "d": "1d", "w": "1w"}
_NONE = "none"


def parse_rate(text: str) -> tuple[int, timedelta]:
    """``100/1m``, ``5/s``, ``10/30s`` -> (count, period); ValueError otherwise."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: write COUNT/PERIOD, e.g. 100/1m, 5/s or 10/30s")
    count = int(match[1])
    period_text = _UNIT_ONLY.get(match[2].lower(), match[2])
    try:
        period = parse_duration(period_text)
    except ValueError as exc:
        raise ValueError(f"{text!r}: the period {match[2]!r} is not a duration (1s, 1m, 30s)") from exc
    if count < 1:
        raise ValueError(f"{text!r}: the count must be at least 1")
    if period <= timedelta(0):
        raise ValueError(f"{text!r}: the period must be more than zero")
    return count, period


def format_rate(rate_limit: int | None, rate_period: timedelta) -> str:
    return _NONE if rate_limit is None else f"{rate_limit}/{format_period(rate_period)}"


class Rate(click.ParamType):
    """COUNT/PERIOD, or ``none`` (no rate limit): (count, period) or None."""

    name = "rate"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "N/PERIOD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, tuple):
            return value
        if str(value).strip().lower() == _NONE:
            return _NONE
        try:
            return parse_rate(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Count(click.ParamType):
    """A whole number >= 1, or ``none`` (no limit)."""

    name = "count"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.lower() == _NONE:
            return _NONE
        if not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is not a whole number of at least 1 (or 'none')", param, ctx)
        return int(text)


# -- schedules ---------------------------------------------------------------------------


def _db_now(client: Client) -> datetime:
    with client.connection() as conn:
        row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return f"{moment.isoformat(timespec='seconds')} ({age(moment, now)})"


@click.group("schedule", short_help="Recurring jobs: add, list and remove cron schedules.")
def schedule_group() -> None:
    """Recurring schedules: a cron expression that enqueues a job into a queue at each slot.

    Workers fire them (oq_tick, every --tick-interval); with no worker running,
    call `select openqueue.oq_tick()` from pg_cron or any cron.
    """


@schedule_group.command("add")
@dsn_option
@click.argument("name")
@click.argument("cron")
@click.argument("queue_name", metavar="QUEUE")
@click.option("--payload", default="{}", show_default=True, help="JSON payload of every job.")
@click.option("--priority", type=int, default=None, help="Higher runs first (default 0).")
@click.option("--max-attempts", type=int, default=None, help="Default: the queue's setting.")
@click.option(
    "--timezone", default=None, help="IANA time zone the cron is read in (default UTC), e.g. Europe/Berlin."
)
def schedule_add_command(
    dsn: str,
    name: str,
    cron: str,
    queue_name: str,
    payload: str,
    priority: int | None,
    max_attempts: int | None,
    timezone: str | None,
) -> None:
    """Create schedule NAME, or replace its definition (a slot that already fired never fires again).

    \b
    CRON: five fields (minute hour day-of-month month day-of-week) or a macro:
      '*/15 * * * *'   every 15 minutes
      '0 2 * * *'      every night at 02:00
      '0 9 * * 1-5'    weekdays at 09:00
      @hourly @daily @weekly @monthly @yearly
    """
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)
    with reported(), Client(dsn) as client:
        client.schedule(name, cron, queue_name, value, priority, max_attempts, timezone)
        found = [s for s in client.list_schedules() if s.schedule_name == name]
        now = _db_now(client)
    line = f"scheduled {name}: {cron!r} ({timezone or 'UTC'}) into queue {queue_name}"
    if found:
        line += f"; next run {_when(found[0].next_run_at, now)}"
    click.echo(line)


@schedule_group.command("list")
@dsn_option
@json_option
def schedule_list_command(dsn: str, as_json: bool) -> None:
    """Every schedule: its cron, time zone, queue, next run and last run (the slot it last fired)."""
    with reported(), Client(dsn) as client:
        schedules = client.list_schedules()
        if as_json:
            echo_json(schedules)
            return
        now = _db_now(client)
    out = console()
    if not schedules:
        out.print("no schedules yet: openqueue schedule add NAME CRON QUEUE")
        return
    grid = table("name", "cron", "timezone", "queue", "next run", "last run")
    for s in schedules:
        grid.add_row(
            s.schedule_name,
            s.cron,
            s.timezone,
            s.queue_name,
            _when(s.next_run_at, now),
            _when(s.last_run_at, now),
        )
    emit(out, grid)


@schedule_group.command("remove")
@dsn_option
@click.argument("name")
def schedule_remove_command(dsn: str, name: str) -> None:
    """Delete schedule NAME (the jobs it already enqueued stay). Exit status 5 when there is none."""
    with reported(), Client(dsn) as client:
        removed = client.unschedule(name)
    if not removed:
        fail(f"schedule {name} does not exist", EXIT_NOT_FOUND)
    click.echo(f"removed schedule {name}")


# -- flow control -------------------------------------------------------------------------


@click.command("pause", short_help="Pause a queue: workers lease nothing from it until resume.")
@dsn_option
@click.argument("queue_name", metavar="QUEUE")
def pause_command(dsn: str, queue_name: str) -> None:
    """Pause QUEUE: leases return nothing from it; enqueue, ack and the rest go on, running jobs finish."""
    with reported(), Client(dsn) as client:
        changed = client.pause_queue(queue_name)
    click.echo(f"paused queue {queue_name}" if changed else f"queue {queue_name} was already paused")


@click.command("resume", short_help="Resume a paused queue (its workers wake at once).")
@dsn_option
@click.argument("queue_name", metavar="QUEUE")
def resume_command(dsn: str, queue_name: str) -> None:
    """Resume QUEUE: leasing starts again and waiting workers are notified."""
    with reported(), Client(dsn) as client:
        changed = client.resume_queue(queue_name)
    click.echo(f"resumed queue {queue_name}" if changed else f"queue {queue_name} was not paused")


def _settings_of(client: Client, queue_name: str) -> QueueSettings | None:
    return next((s for s in client.queue_settings() if s.queue_name == queue_name), None)


def limits_text(max_running: int | None, rate_limit: int | None, rate_period: timedelta) -> str:
    running = _NONE if max_running is None else str(max_running)
    return f"max_running={running} rate={format_rate(rate_limit, rate_period)}"


@click.command("limits", short_help="Show or set a queue's max running jobs and lease rate.")
@dsn_option
@click.argument("queue_name", metavar="QUEUE")
@click.option(
    "--max-running",
    type=Count(),
    default=None,
    help="At most N jobs of the queue running at once, across all workers ('none': no limit).",
)
@click.option("--no-max-running", is_flag=True, help="Remove the max-running limit.")
@click.option(
    "--rate",
    type=Rate(),
    default=None,
    help="At most N leases per PERIOD, in bursts of up to N: 100/1m, 5/s ('none': no limit).",
)
@click.option("--no-rate", is_flag=True, help="Remove the rate limit.")
@json_option
def limits_command(
    dsn: str,
    queue_name: str,
    max_running: Any,
    no_max_running: bool,
    rate: Any,
    no_rate: bool,
    as_json: bool,
) -> None:
    """Show QUEUE's limits (no option), or change them; every worker obeys them.

    oq_set_queue_limits sets both limits at once, so this command reads the
    current ones first and keeps the one you do not give: `--rate 5/s` leaves
    max_running as it was. `none`, --no-max-running and --no-rate remove a
    limit. (Read then set: a concurrent change of the other limit between the
    two can be overwritten.)
    """
    if max_running is not None and no_max_running:
        raise click.UsageError("give --max-running or --no-max-running, not both")
    if rate is not None and no_rate:
        raise click.UsageError("give --rate or --no-rate, not both")
    if no_max_running:
        max_running = _NONE
    if no_rate:
        rate = _NONE
    with reported(), Client(dsn) as client:
        current = _settings_of(client, queue_name)
        old_running = current.max_running if current else None
        old_rate = current.rate_limit if current else None
        old_period = current.rate_period if current else timedelta(seconds=1)
        if max_running is None and rate is None:
            if as_json:
                echo_json({"queue_name": queue_name, **_limits_json(old_running, old_rate, old_period)})
            else:
                click.echo(f"queue {queue_name}: {limits_text(old_running, old_rate, old_period)}")
            return
        new_running = old_running if max_running is None else (None if max_running == _NONE else max_running)
        if rate is None:
            new_rate, new_period = old_rate, old_period
        elif rate == _NONE:
            new_rate, new_period = None, timedelta(seconds=1)
        else:
            new_rate, new_period = rate
        client.set_queue_limits(queue_name, new_running, new_rate, new_period)
    if as_json:
        echo_json({"queue_name": queue_name, **_limits_json(new_running, new_rate, new_period)})
    else:
        click.echo(f"queue {queue_name}: {limits_text(new_running, new_rate, new_period)}")


def _limits_json(max_running: int | None, rate_limit: int | None, rate_period: timedelta) -> dict[str, Any]:
    return {
        "max_running": max_running,
        "rate_limit": rate_limit,
        "rate_period": rate_period.total_seconds() if rate_limit is not None else None,
    }


def queue_settings_or_none(client: Client) -> dict[str, QueueSettings] | None:
    """Every queue's settings, or None when this role may not read them (oq_queue_settings is admin's)."""
    try:
        return {s.queue_name: s for s in client.queue_settings()}
    except psycopg.errors.InsufficientPrivilege:
        return None


COMMANDS = (schedule_group, pause_command, resume_command, limits_command)
