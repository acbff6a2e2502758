"""The ``openqueue`` command line (click + rich).

Every command takes ``--dsn`` or reads ``OPENQUEUE_DSN`` (else
``DATABASE_URL``). Read commands take ``--json``; durations are written
``90s``, ``15m``, ``7d``, ``1h30m`` or plain seconds. An error is one line on
stderr (``openqueue --verbose ...`` adds its full detail) and an exit status
that says what kind of error it was: see :data:`EXIT_CODES`.

One module per command group: ``jobs`` (jobs, dead, cancel, replay), ``flow``
(schedule, pause, resume, limits), ``demo`` and ``dashboard``; the queue-wide
commands and the worker are here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

import click

from .. import _connect
from ..client import Client
from ..migrate import install, installed_version
from ._common import (
    EPILOG,
    EXIT_CANNOT_CONNECT,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_NOT_INSTALLED,
    EXIT_USAGE,
    Duration,
    age,
    console,
    dsn_option,
    echo_json,
    emit,
    fail,
    format_duration,
    json_option,
    reported,
    table,
)

__all__ = [
    "EXIT_CANNOT_CONNECT",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_INSTALLED",
    "EXIT_USAGE",
    "main",
]

# Kept for code that imported the old module's names.
_reported = reported
_fail = fail


@click.group(
    epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120}
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="On an error, print its full detail and traceback (demo: server logs).",
)
@click.version_option(package_name="openqueue")
def main(verbose: bool) -> None:
    """OpenQueue: a PostgreSQL-native job queue.

    \b
    First steps:
      openqueue demo                      a live tour on a throw-away PostgreSQL
      openqueue install --dsn DSN         install or upgrade the schema
      openqueue stats --dsn DSN --watch   queues at a glance
      openqueue dead list                 what failed for good, and why
    """


@main.command("install", short_help="Install or upgrade the openqueue schema.")
@dsn_option
def install_command(dsn: str) -> None:
    """Install or upgrade the openqueue schema (same as psql -f sql/openqueue.sql)."""
    with reported(), _connect.connect(dsn, autocommit=True) as conn:
        before = installed_version(conn)
        install(conn)
        after = installed_version(conn)
    if before == after:
        click.echo(f"openqueue schema is up to date (version {after})")
    else:
        click.echo(f"openqueue schema upgraded from version {before} to {after}")


@main.command("enqueue")
@dsn_option
@click.option("--queue", "queue_name", required=True, help="Queue name.")
@click.option("--payload", default="{}", show_default=True, help="JSON payload.")
@click.option("--priority", type=int, default=None, help="Higher runs first (default 0).")
@click.option(
    "--delay", type=Duration(), default=None, help="How long from now before the job is due (90s, 15m)."
)
@click.option("--max-attempts", type=int, default=None, help="Default: the queue's setting.")
@click.option("--idempotency-key", default=None)
def enqueue_command(
    dsn: str,
    queue_name: str,
    payload: str,
    priority: int | None,
    delay: timedelta | None,
    max_attempts: int | None,
    idempotency_key: str | None,
) -> None:
    """Enqueue one job and print its id."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}", EXIT_USAGE)
    with reported(), Client(dsn) as client:
        run_at = None
        if delay is not None:
            with client.connection() as conn:
                row = conn.execute("select now() + %s", (delay,)).fetchone()
                run_at = row[0] if row else None
        job_id = client.enqueue(queue_name, value, priority, run_at, max_attempts, idempotency_key)
    click.echo(job_id)


_COUNTS = ("pending", "processing", "failed", "completed", "dead", "cancelled")


def _stats_table(rows: list[Any], now: datetime, settings: dict[str, Any] | None = None) -> Any:
    extra = [f.name for f in dataclasses.fields(rows[0])] if rows else []
    extra = [name for name in extra if name not in (*_COUNTS, "queue_name", "oldest_due_at", "paused")]
    limits = ("max running", "rate") if settings is not None else ()
    grid = table("queue", *_COUNTS, "oldest due", "paused", *limits, *extra, numeric=_COUNTS)
    for r in rows:
        shown = settings.get(r.queue_name) if settings is not None else None
        limit_cells: tuple[str, ...] = ()
        if settings is not None:
            limit_cells = (
                "-" if shown is None or shown.max_running is None else str(shown.max_running),
                "-"
                if shown is None or shown.rate_limit is None
                else _flow.format_rate(shown.rate_limit, shown.rate_period),
            )
        grid.add_row(
            r.queue_name,
            *(f"{getattr(r, name):,}" for name in _COUNTS),
            age(r.oldest_due_at, now),
            "paused" if r.paused else "",
            *limit_cells,
            *(str(getattr(r, name)) for name in extra),
        )
    if not rows:
        grid.caption = "no queues yet"
    return grid


def _stats_json(rows: list[Any], settings: dict[str, Any] | None) -> list[Any]:
    """oq_stats rows, each with max_running, rate_limit and rate_period (seconds) when readable."""
    if settings is None:
        return rows
    out = []
    for r in rows:
        shown = settings.get(r.queue_name)
        row = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
        row["max_running"] = shown.max_running if shown else None
        row["rate_limit"] = shown.rate_limit if shown else None
        row["rate_period"] = shown.rate_period if shown and shown.rate_limit is not None else None
        out.append(row)
    return out


def _db_now(client: Client) -> datetime:
    with client.connection() as conn:
        row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]


@main.command("stats", short_help="Job counts per queue and state (--watch: live).")
@dsn_option
@json_option
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (JSON: one array per line).")
@click.option(
    "--interval",
    type=Duration(positive=True),
    default="2s",
    show_default=True,
    help="Time between refreshes with --watch.",
)
@click.option(
    "--count", type=click.IntRange(min=1), default=None, help="With --watch: stop after N refreshes."
)
def stats_command(dsn: str, as_json: bool, watch: bool, interval: timedelta, count: int | None) -> None:
    """Job counts per queue and state, and how long the oldest due job has waited."""
    out = console()
    with reported(), Client(dsn) as client:
        if not watch:
            rows = client.stats()
            settings = _flow.queue_settings_or_none(client)
            if as_json:
                echo_json(_stats_json(rows, settings))
            else:
                emit(out, _stats_table(rows, _db_now(client), settings))
            return
        try:
            _watch_stats(client, out, as_json, interval.total_seconds(), count)
        except KeyboardInterrupt:
            return


def _watch_stats(client: Client, out: Any, as_json: bool, seconds: float, count: int | None) -> None:
    refreshes = 0
    live = None
    if not as_json and out.is_terminal:
        from rich.live import Live

        live = Live(console=out, auto_refresh=False)
        live.start()
    try:
        while count is None or refreshes < count:
            if refreshes:
                time.sleep(seconds)
            rows = client.stats()
            settings = _flow.queue_settings_or_none(client)
            refreshes += 1
            if as_json:
                echo_json(_stats_json(rows, settings), indent=None)
                continue
            now = _db_now(client)
            grid = _stats_table(rows, now, settings)
            grid.title = f"openqueue stats at {now.isoformat(timespec='seconds')}"
            if live is not None:
                live.update(grid, refresh=True)
            else:
                emit(out, grid)
                click.echo()
    finally:
        if live is not None:
            live.stop()


@main.command("reap")
@dsn_option
def reap_command(dsn: str) -> None:
    """Reclaim jobs whose lease expired; print how many."""
    with reported(), Client(dsn) as client:
        click.echo(client.reap())


@main.command("purge", short_help="Delete finished jobs older than a duration.")
@dsn_option
@click.option(
    "--older-than",
    type=Duration(),
    required=True,
    help="Delete finished jobs that finished longer ago than this (7d, 12h, 3600).",
)
@click.option("--include-dead", is_flag=True, help="Delete dead jobs too.")
def purge_command(dsn: str, older_than: timedelta, include_dead: bool) -> None:
    """Delete completed and cancelled (and with --include-dead, dead) jobs; print how many."""
    with reported(), Client(dsn) as client:
        click.echo(client.purge(older_than, include_dead))


@main.command("configure", short_help="Set a queue's attempts, lease and backoff.")
@dsn_option
@click.argument("queue_name", metavar="QUEUE")
@click.option(
    "--max-attempts", type=click.IntRange(min=1), default=None, help="Attempts before a job is dead."
)
@click.option(
    "--lease-seconds",
    "--lease",
    "lease",
    type=Duration(positive=True, whole_seconds=True),
    default=None,
    help="Lease length (30s, 5m).",
)
@click.option(
    "--backoff-base", type=Duration(positive=True), default=None, help="First retry delay (1s, 200ms)."
)
@click.option("--backoff-max", type=Duration(positive=True), default=None, help="Longest retry delay (1h).")
def configure_command(
    dsn: str,
    queue_name: str,
    max_attempts: int | None,
    lease: timedelta | None,
    backoff_base: timedelta | None,
    backoff_max: timedelta | None,
) -> None:
    """Set a queue's defaults; an option left out keeps its current value."""
    if max_attempts is None and lease is None and backoff_base is None and backoff_max is None:
        raise click.UsageError(
            "give at least one of --max-attempts, --lease-seconds, --backoff-base, --backoff-max"
        )
    lease_seconds = None if lease is None else int(lease.total_seconds())
    with reported(), Client(dsn) as client:
        client.configure_queue(queue_name, max_attempts, lease_seconds, backoff_base, backoff_max)
    settings = {
        "max_attempts": max_attempts,
        "lease_seconds": lease_seconds,
        "backoff_base": None if backoff_base is None else format_duration(backoff_base),
        "backoff_max": None if backoff_max is None else format_duration(backoff_max),
    }
    changed = " ".join(f"{name}={value}" for name, value in settings.items() if value is not None)
    click.echo(f"configured queue {queue_name}: {changed}")


# -- worker ------------------------------------------------------------------


def _import_object(spec: str, option: str) -> Any:
    """``module:attribute`` (the attribute may be dotted) -> the object."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise click.BadParameter(f"{spec!r} is not of the form module:attribute", param_hint=option)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise click.BadParameter(
            f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})", param_hint=option
        ) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise click.BadParameter(
                f"{module_name!r} has no attribute {attribute!r}", param_hint=option
            ) from exc
    return target


def _worker_handlers(queue_specs: tuple[str, ...], app: str | None) -> dict[str, Any]:
    handlers: dict[str, Any] = {}
    if app is not None:
        found = _import_object(app, "--app")
        if not isinstance(found, Mapping):
            raise click.BadParameter(f"{app!r} is not a dict of queue name -> handler", param_hint="--app")
        handlers.update(found)
    for spec in queue_specs:
        name, equals, target = spec.partition("=")
        if not equals or not name or not target:
            raise click.BadParameter(
                f"{spec!r} is not of the form NAME=module:function", param_hint="--queue"
            )
        if name in handlers:
            raise click.BadParameter(f"queue {name!r} is given twice", param_hint="--queue")
        handlers[name] = _import_object(target, "--queue")
    if not handlers:
        raise click.UsageError("give at least one --queue NAME=module:function, or --app module:handlers")
    for name, handler in handlers.items():
        if not callable(handler):
            raise click.BadParameter(f"the handler for queue {name!r} is not callable: {handler!r}")
    return handlers


@main.command("worker", short_help="Run handlers for queues until SIGTERM or SIGINT.")
@dsn_option
@click.option(
    "--queue",
    "queue_specs",
    multiple=True,
    metavar="NAME=MODULE:FUNCTION",
    help="A queue and its handler; repeat for more queues.",
)
@click.option("--app", default=None, metavar="MODULE:HANDLERS", help="A dict of queue name -> handler.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between polls when no notification arrives.",
)
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a stop waits for in-flight jobs; then they are abandoned and the process exits.",
)
@click.option("--lease-seconds", type=int, default=None, help="Lease length (default: each queue's setting).")
@click.option(
    "--reap-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between oq_reap() calls.",
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between oq_tick() calls that fire due schedules (one worker at a time); 0: never.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Most jobs per lease call.")
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Jobs leased ahead while every slot is busy.",
)
@click.option(
    "--durable-leases/--no-durable-leases",
    default=True,
    show_default=True,
    help="Leases wait for the WAL flush; --no-durable-leases trades a crash-forgotten "
    "lease (an attempt not counted) for a faster pick-up.",
)
@click.option("--worker-id", default=None, help="Recorded as leased_by (default host:pid:random).")
@click.option(
    "--listen-dsn",
    envvar="OPENQUEUE_LISTEN_DSN",
    default=None,
    help="Where LISTEN connects (default: --dsn); PostgreSQL itself when --dsn is a transaction pooler.",
)
@click.option(
    "--prepare-threshold",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Runs of a statement before psycopg prepares it on the server.",
)
@click.option(
    "--no-prepare",
    is_flag=True,
    help="Never prepare statements (PgBouncer before 1.21 in transaction pooling mode).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve this worker's Prometheus metrics (handler durations, jobs processed) on this port.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def worker_command(
    dsn: str,
    queue_specs: tuple[str, ...],
    app: str | None,
    concurrency: int,
    poll_interval: float,
    grace_period: float,
    lease_seconds: int | None,
    reap_interval: float,
    tick_interval: float,
    batch_size: int | None,
    prefetch: int,
    durable_leases: bool,
    worker_id: str | None,
    listen_dsn: str | None,
    prepare_threshold: int,
    no_prepare: bool,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Run handlers for queues until SIGTERM or SIGINT (a second one exits at once, status 128+signal).

    Handlers are plain functions (run in threads) or all async functions
    (run on an event loop); mixing the two is refused. Exit status 0 after
    a clean shutdown.
    """
    from ..worker import AsyncWorker, LogFormatter, Worker, _is_async_callable
    from ..worker.eventloop import run as run_loop

    # Like `python -m`, find handler modules in the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    handlers = _worker_handlers(queue_specs, app)
    kinds = {_is_async_callable(handler) for handler in handlers.values()}
    if len(kinds) > 1:
        raise click.UsageError(
            "handlers mix async and plain functions; run them in two workers "
            "(async: " + ", ".join(q for q, h in handlers.items() if _is_async_callable(h)) + ")"
        )

    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(LogFormatter())
    root = logging.getLogger()
    root.addHandler(stream)
    root.setLevel(log_level.upper())

    options: dict[str, Any] = {
        "concurrency": concurrency,
        "poll_interval": poll_interval,
        "grace_period": grace_period,
        "lease_seconds": lease_seconds,
        "reap_interval": reap_interval,
        "tick_interval": tick_interval,
        "batch_size": batch_size,
        "prefetch": prefetch,
        "durable_leases": durable_leases,
        "worker_id": worker_id,
        "listen_dsn": listen_dsn,
        "prepare_threshold": None if no_prepare else prepare_threshold,
        "metrics_port": metrics_port,
    }
    # A second signal reaches these (the worker restores them): exit at once
    # with 128 + the signal's number (130 for SIGINT's KeyboardInterrupt).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with reported():
            if kinds == {True}:
                async_worker = AsyncWorker(dsn, handlers, **options)
                run_loop(async_worker.run())  # the CLI owns this loop: uvloop's where installed
            else:
                Worker(dsn, handlers, **options).run()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)


def _exit_on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


# -- the other command groups -------------------------------------------------------

from . import dashboard as _dashboard  # noqa: E402
from . import demo as _demo  # noqa: E402
from . import flow as _flow  # noqa: E402
from . import jobs as _jobs  # noqa: E402

for _command in (*_jobs.COMMANDS, _demo.demo_command, _dashboard.dashboard_command, *_flow.COMMANDS):
    main.add_command(_command)
