"""The ``openqueue`` command line (click).

Every command takes ``--dsn`` or reads ``OPENQUEUE_DSN``. An error is one
line on stderr (``openqueue --verbose ...`` adds its full detail) and an exit
status that says what kind of error it was: see :data:`EXIT_CODES`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NoReturn

import click
import psycopg

from . import _connect
from .client import Client
from .errors import ConnectionFailed, NotInstalled, OpenQueueError
from .migrate import install, installed_version

EXIT_FAILED = 1  # the command ran and failed: refused by the database, job not in that state ...
EXIT_USAGE = 2  # bad options or arguments (click's own)
EXIT_CANNOT_CONNECT = 3  # wrong host, port, role, password or database
EXIT_NOT_INSTALLED = 4  # the database has no openqueue schema: run `openqueue install`

EXIT_CODES = {
    0: "success",
    EXIT_FAILED: "the command failed (the database refused it, or the job is not in that state)",
    EXIT_USAGE: "bad options or arguments",
    EXIT_CANNOT_CONNECT: "cannot connect (wrong host, port, role, password or database)",
    EXIT_NOT_INSTALLED: "openqueue is not installed in that database (run `openqueue install`)",
}

dsn_option = click.option(
    "--dsn",
    envvar="OPENQUEUE_DSN",
    required=True,
    help="PostgreSQL connection string (or set OPENQUEUE_DSN).",
)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"openqueue: {message}", err=True)
    sys.exit(code)


def _verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("verbose"))


def _summary(exc: BaseException) -> str:
    """One line: a database error's primary message, else the first line of the exception."""
    if isinstance(exc, psycopg.Error) and not isinstance(exc, OpenQueueError) and exc.diag.message_primary:
        return _connect.one_line(exc.diag.message_primary)
    text = str(exc).strip()
    return _connect.one_line(text.splitlines()[0]) if text else type(exc).__name__


def _detail(exc: BaseException) -> Iterator[str]:
    """Everything known about an error and its causes, for --verbose."""
    seen: BaseException | None = exc
    while seen is not None:
        yield f"{type(seen).__module__}.{type(seen).__qualname__}: {str(seen).strip()}"
        if isinstance(seen, psycopg.Error) and seen.sqlstate:
            diag = seen.diag
            yield f"  SQLSTATE: {seen.sqlstate}"
            for label, value in (("DETAIL", diag.message_detail), ("HINT", diag.message_hint)):
                if value:
                    yield f"  {label}: {value}"
            if diag.context:
                yield "  CONTEXT: " + diag.context.strip().replace("\n", "\n           ")
        seen = seen.__cause__
    yield "".join(traceback.format_exception(exc)).rstrip()


@contextmanager
def _reported() -> Iterator[None]:
    """Turn a database or OpenQueue error into one line on stderr and its exit status."""
    try:
        yield
    except ConnectionFailed as exc:
        _report(exc, EXIT_CANNOT_CONNECT)
    except NotInstalled as exc:
        _report(exc, EXIT_NOT_INSTALLED)
    except (psycopg.Error, OpenQueueError) as exc:
        _report(exc, EXIT_FAILED)


def _report(exc: BaseException, code: int) -> NoReturn:
    if _verbose():
        click.echo(f"openqueue: {_summary(exc)}", err=True)
        for line in _detail(exc):
            click.echo(line, err=True)
        sys.exit(code)
    _fail(_summary(exc), code)


_EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


@click.group(epilog=_EPILOG)
@click.option("--verbose", "-v", is_flag=True, help="On an error, print its full detail and traceback.")
@click.version_option(package_name="openqueue")
def main(verbose: bool) -> None:
    """OpenQueue: a PostgreSQL-native job queue."""


@main.command("install")
@dsn_option
def install_command(dsn: str) -> None:
    """Install or upgrade the openqueue schema (same as psql -f sql/openqueue.sql)."""
    with _reported(), _connect.connect(dsn, autocommit=True) as conn:
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
@click.option("--delay", type=float, default=None, help="Seconds from now before the job is due.")
@click.option("--max-attempts", type=int, default=None, help="Default: the queue's setting.")
@click.option("--idempotency-key", default=None)
def enqueue_command(
    dsn: str,
    queue_name: str,
    payload: str,
    priority: int | None,
    delay: float | None,
    max_attempts: int | None,
    idempotency_key: str | None,
) -> None:
    """Enqueue one job and print its id."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"--payload is not valid JSON: {exc}")
    with _reported(), Client(dsn) as client:
        run_at = None
        if delay is not None:
            with client.connection() as conn:
                row = conn.execute("select now() + %s", (timedelta(seconds=delay),)).fetchone()
                run_at = row[0] if row else None
        job_id = client.enqueue(queue_name, value, priority, run_at, max_attempts, idempotency_key)
    click.echo(job_id)


@main.command("stats")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_command(dsn: str, as_json: bool) -> None:
    """Job counts per queue and state."""
    with _reported(), Client(dsn) as client:
        rows = client.stats()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        **{k: getattr(r, k) for k in r.__slots__ if k != "oldest_due_at"},
                        "oldest_due_at": r.oldest_due_at.isoformat() if r.oldest_due_at else None,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "queue", "pending", "processing", "failed", "completed", "dead", "cancelled", "oldest due", "paused"
    )
    for r in rows:
        table.add_row(
            r.queue_name,
            *(str(n) for n in (r.pending, r.processing, r.failed, r.completed, r.dead, r.cancelled)),
            r.oldest_due_at.isoformat(timespec="seconds") if r.oldest_due_at else "-",
            "yes" if r.paused else "no",
        )
    Console().print(table)


@main.command("reap")
@dsn_option
def reap_command(dsn: str) -> None:
    """Reclaim jobs whose lease expired; print how many."""
    with _reported(), Client(dsn) as client:
        click.echo(client.reap())


@main.command("purge")
@dsn_option
@click.option("--older-than", type=float, required=True, help="Age in seconds of finished jobs to delete.")
@click.option("--include-dead", is_flag=True, help="Delete dead jobs too.")
def purge_command(dsn: str, older_than: float, include_dead: bool) -> None:
    """Delete finished jobs older than --older-than seconds; print how many."""
    with _reported(), Client(dsn) as client:
        click.echo(client.purge(timedelta(seconds=older_than), include_dead))


@main.command("cancel")
@dsn_option
@click.argument("job_id", type=int)
def cancel_command(dsn: str, job_id: int) -> None:
    """Cancel a pending, failed or processing job."""
    with _reported(), Client(dsn) as client:
        done = client.cancel(job_id)
    if not done:
        _fail(f"job {job_id} is not pending, failed or processing")
    click.echo(f"cancelled job {job_id}")


@main.command("replay")
@dsn_option
@click.argument("job_id", type=int)
def replay_command(dsn: str, job_id: int) -> None:
    """Put a dead or cancelled job back to pending."""
    with _reported(), Client(dsn) as client:
        done = client.replay(job_id)
    if not done:
        _fail(f"job {job_id} is not dead or cancelled")
    click.echo(f"replayed job {job_id}")


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


@main.command("worker")
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
    batch_size: int | None,
    prefetch: int,
    durable_leases: bool,
    worker_id: str | None,
    listen_dsn: str | None,
    prepare_threshold: int,
    no_prepare: bool,
    log_level: str,
) -> None:
    """Run handlers for queues until SIGTERM or SIGINT (a second one exits at once, status 128+signal).

    Handlers are plain functions (run in threads) or all async functions
    (run on an event loop); mixing the two is refused. Exit status 0 after
    a clean shutdown.
    """
    from .worker import AsyncWorker, LogFormatter, Worker, _is_async_callable

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
        "batch_size": batch_size,
        "prefetch": prefetch,
        "durable_leases": durable_leases,
        "worker_id": worker_id,
        "listen_dsn": listen_dsn,
        "prepare_threshold": None if no_prepare else prepare_threshold,
    }
    # A second signal reaches these (the worker restores them): exit at once
    # with 128 + the signal's number (130 for SIGINT's KeyboardInterrupt).
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        with _reported():
            if kinds == {True}:
                async_worker = AsyncWorker(dsn, handlers, **options)
                asyncio.run(async_worker.run())
            else:
                Worker(dsn, handlers, **options).run()
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)


def _exit_on_signal(signum: int, frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


if __name__ == "__main__":  # pragma: no cover
    main()
