"""``openqueue jobs``, ``openqueue dead``, ``openqueue cancel`` and ``openqueue replay``.

Reads go through ``openqueue.jobs`` (``Client.list_jobs`` / ``get_job``),
never the lease token. An id that names no job is exit status 5.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import click

from ..client import Client
from ..models import JobRecord, JobState
from ._common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    Duration,
    age,
    console,
    dsn_option,
    echo_json,
    emit,
    fail,
    json_option,
    reported,
    table,
)

# The table shows this much of a payload or an error; `jobs show` and --json show all of it.
PREVIEW = 120


def _preview(text: str, limit: int = PREVIEW) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _last_error(record: JobRecord) -> str:
    if not record.errors:
        return ""
    return (record.errors[-1].get("error") or "").strip().splitlines()[0] if record.errors[-1] else ""


def _db_now(client: Client) -> datetime:
    with client.connection() as conn:
        row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]


def _filters(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--queue", "queue_name", default=None, help="Only this queue."),
            click.option(
                "--older-than", type=Duration(), default=None, help="Only jobs created longer ago (7d, 2h)."
            ),
            click.option(
                "--newer-than", type=Duration(), default=None, help="Only jobs created more recently (15m)."
            ),
            click.option(
                "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Jobs per page."
            ),
            click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many first."),
            click.option(
                "--after-id",
                type=int,
                default=None,
                help="Next page by key: jobs listed after this id (smaller ids).",
            ),
        ]
    ):
        function = option(function)
    return function


def _list(
    dsn: str,
    queue_name: str | None,
    state: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    offset: int,
    after_id: int | None,
    as_json: bool,
    with_errors: bool,
) -> None:
    with reported(), Client(dsn) as client:
        records = client.list_jobs(queue_name, state, older_than, newer_than, limit, offset, after_id)
        if as_json:
            echo_json(records)
            return
        total = client.count_jobs(queue_name, state, older_than, newer_than)
        now = _db_now(client)
    columns = ["id", "queue", "state", "priority", "attempts", "created", "run at"]
    columns += ["finished", "last error"] if with_errors else ["last error", "payload"]
    grid = table(*columns, numeric=("id", "priority", "attempts"))
    for r in records:
        row = [
            str(r.id),
            r.queue_name,
            r.status.value,
            str(r.priority),
            f"{r.attempts}/{r.max_attempts}",
            age(r.created_at, now),
            age(r.run_at, now),
        ]
        if with_errors:
            row += [age(r.finished_at, now), _preview(_last_error(r), 200)]
        else:
            row += [_preview(_last_error(r), 60), _preview(json.dumps(r.payload, ensure_ascii=False))]
        grid.add_row(*row)
    out = console()
    if not records:
        out.print("no jobs match" if total == 0 else f"no jobs on this page ({total:,} match)")
        return
    emit(out, grid)
    shown = f"{len(records):,} of {total:,}" if after_id is None else f"{len(records):,}"
    footer = f"{shown} jobs shown"
    if len(records) == limit and (after_id is not None or offset + limit < total):
        footer += f"; next page: --after-id {records[-1].id}"
    out.print(footer)


@click.group("jobs", short_help="List jobs and show one job in full.")
def jobs_group() -> None:
    """List and inspect jobs (reads openqueue.jobs)."""


@jobs_group.command("list")
@dsn_option
@_filters
@click.option(
    "--state",
    type=click.Choice([s.value for s in JobState]),
    default=None,
    help="Only jobs in this state.",
)
@json_option
def jobs_list_command(
    dsn: str,
    queue_name: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    offset: int,
    after_id: int | None,
    state: str | None,
    as_json: bool,
) -> None:
    """Jobs, newest first: filter by queue, state and age; page with --limit and --after-id."""
    _list(dsn, queue_name, state, older_than, newer_than, limit, offset, after_id, as_json, False)


@jobs_group.command("show")
@dsn_option
@click.argument("job_id", type=int)
@json_option
def jobs_show_command(dsn: str, job_id: int, as_json: bool) -> None:
    """Everything about one job: payload, result, every error with its traceback, timestamps."""
    with reported(), Client(dsn) as client:
        record = client.get_job(job_id)
        now = _db_now(client)
    if record is None:
        fail(f"job {job_id} does not exist", EXIT_NOT_FOUND)
    if as_json:
        echo_json(record)
        return
    _show(record, now)


def _show(r: JobRecord, now: datetime) -> None:
    from rich.text import Text

    out = console()

    def stamp(moment: datetime | None) -> str:
        return "-" if moment is None else f"{moment.isoformat(timespec='milliseconds')}  ({age(moment, now)})"

    fields = [
        ("id", str(r.id)),
        ("queue", r.queue_name),
        ("state", r.status.value),
        ("priority", str(r.priority)),
        ("attempts", f"{r.attempts} of {r.max_attempts}"),
        ("created", stamp(r.created_at)),
        ("run at", stamp(r.run_at)),
        ("finished", stamp(r.finished_at)),
        ("leased by", r.leased_by or "-"),
        ("lease expires", stamp(r.lease_expires_at)),
        ("idempotency key", r.idempotency_key or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        out.print(Text(f"{name:<{width}}  {value}"))
    out.print(Text("\npayload:"))
    out.print(Text(_indent(json.dumps(r.payload, indent=2, ensure_ascii=False))))
    out.print(Text("result:"))
    out.print(Text(_indent("-" if r.result is None else json.dumps(r.result, indent=2, ensure_ascii=False))))
    out.print(Text(f"errors ({len(r.errors)}):" if r.errors else "errors: none"))
    for entry in r.errors:
        out.print(Text(f"  attempt {entry.get('attempt', '?')} at {entry.get('at', '?')}:"))
        out.print(Text(_indent(str(entry.get("error") or ""), 4)))


def _indent(text: str, spaces: int = 2) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines() or [""])


@click.group("dead", short_help="List dead jobs and their errors; replay them.")
def dead_group() -> None:
    """The dead-letter list: jobs that failed for good, and replaying them."""


@dead_group.command("list")
@dsn_option
@_filters
@json_option
def dead_list_command(
    dsn: str,
    queue_name: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    offset: int,
    after_id: int | None,
    as_json: bool,
) -> None:
    """Dead jobs, newest first, with their last error (`openqueue jobs show ID` for all of them)."""
    _list(dsn, queue_name, "dead", older_than, newer_than, limit, offset, after_id, as_json, True)


@dead_group.command("replay")
@dsn_option
@click.argument("job_ids", nargs=-1, type=int, metavar="[ID]...")
@click.option("--queue", "queue_name", default=None, help="Replay every dead job of this queue.")
@click.option("--all", "all_", is_flag=True, help="Replay every dead job (of --queue, else of every queue).")
@click.option(
    "--older-than", type=Duration(), default=None, help="With --queue/--all: only jobs created longer ago."
)
@click.option(
    "--newer-than", type=Duration(), default=None, help="With --queue/--all: only jobs created recently."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def dead_replay_command(
    dsn: str,
    job_ids: tuple[int, ...],
    queue_name: str | None,
    all_: bool,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    yes: bool,
) -> None:
    """Put dead jobs back to pending: the ones given by id, or in bulk (--queue Q, --all).

    A bulk replay counts the jobs first and asks before it replays them
    (--yes does not ask); it prints how many were replayed.
    """
    bulk = queue_name is not None or all_
    if job_ids and bulk:
        raise click.UsageError("give job ids, or --queue/--all, not both")
    if not job_ids and not bulk:
        raise click.UsageError("give job ids, or --queue QUEUE / --all to replay dead jobs in bulk")
    if job_ids and (older_than is not None or newer_than is not None):
        raise click.UsageError("--older-than and --newer-than go with --queue or --all")
    with reported(), Client(dsn) as client:
        if job_ids:
            _replay_ids(client, job_ids)
            return
        dead = client.list_jobs(queue_name, "dead", older_than, newer_than, limit=None)
        where = f"of queue {queue_name}" if queue_name else "in every queue"
        if not dead:
            click.echo(f"no dead jobs {where}: nothing to replay")
            return
        if not yes:
            question = f"replay {len(dead):,} dead job{'s' if len(dead) != 1 else ''} {where}?"
            try:
                confirmed = click.confirm(question, default=False, err=True)
            except click.Abort:  # no answer: end of input
                click.echo(err=True)
                confirmed = False
            if not confirmed:
                fail("not confirmed: nothing replayed", EXIT_FAILED)
        replayed = client.replay_many([r.id for r in dead])
    skipped = len(dead) - len(replayed)
    line = f"replayed {len(replayed):,} job{'s' if len(replayed) != 1 else ''}"
    if skipped:
        line += f" ({skipped:,} no longer dead)"
    click.echo(line)


def _replay_ids(client: Client, job_ids: Sequence[int]) -> None:
    replayed = set(client.replay_many(list(job_ids)))
    code = 0
    for job_id in job_ids:
        if job_id in replayed:
            click.echo(f"replayed job {job_id}")
            continue
        record = client.get_job(job_id)
        if record is None:
            click.echo(f"openqueue: job {job_id} does not exist", err=True)
            code = code or EXIT_NOT_FOUND
        else:
            click.echo(f"openqueue: job {job_id} is {record.status.value}, not dead or cancelled", err=True)
            code = EXIT_FAILED
    if code:
        raise SystemExit(code)


@click.command("replay", short_help="Put dead or cancelled jobs back to pending.")
@dsn_option
@click.argument("job_ids", nargs=-1, required=True, type=int, metavar="ID...")
def replay_command(dsn: str, job_ids: tuple[int, ...]) -> None:
    """Put dead or cancelled jobs back to pending, due now, attempts reset."""
    with reported(), Client(dsn) as client:
        _replay_ids(client, job_ids)


@click.command("cancel", short_help="Cancel pending, failed or processing jobs.")
@dsn_option
@click.argument("job_ids", nargs=-1, required=True, type=int, metavar="ID...")
def cancel_command(dsn: str, job_ids: tuple[int, ...]) -> None:
    """Cancel pending, failed or processing jobs (a held lease is revoked)."""
    code = 0
    with reported(), Client(dsn) as client:
        for job_id in job_ids:
            if client.cancel(job_id):
                click.echo(f"cancelled job {job_id}")
                continue
            record = client.get_job(job_id)
            if record is None:
                click.echo(f"openqueue: job {job_id} does not exist", err=True)
                code = code or EXIT_NOT_FOUND
            else:
                click.echo(
                    f"openqueue: job {job_id} is {record.status.value}, not pending, failed or processing",
                    err=True,
                )
                code = EXIT_FAILED
    if code:
        raise SystemExit(code)


COMMANDS = (jobs_group, dead_group, replay_command, cancel_command)
