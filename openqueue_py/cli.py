"""The ``openqueue`` command line (click).

Every command takes ``--dsn`` or reads ``OPENQUEUE_DSN``.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta

import click
import psycopg

from .client import Client
from .errors import OpenQueueError
from .migrate import install, installed_version

dsn_option = click.option(
    "--dsn",
    envvar="OPENQUEUE_DSN",
    required=True,
    help="PostgreSQL connection string (or set OPENQUEUE_DSN).",
)


def _fail(message: str) -> None:
    click.echo(f"openqueue: {message}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(package_name="openqueue")
def main() -> None:
    """OpenQueue: a PostgreSQL-native job queue."""


@main.command("install")
@dsn_option
def install_command(dsn: str) -> None:
    """Install or upgrade the openqueue schema (same as psql -f sql/openqueue.sql)."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            before = installed_version(conn)
            install(conn)
            after = installed_version(conn)
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))
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
    try:
        with Client(dsn) as client:
            run_at = None
            if delay is not None:
                with client.connection() as conn:
                    row = conn.execute("select now() + %s", (timedelta(seconds=delay),)).fetchone()
                    run_at = row[0] if row else None
            job_id = client.enqueue(queue_name, value, priority, run_at, max_attempts, idempotency_key)
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))
    click.echo(job_id)


@main.command("stats")
@dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_command(dsn: str, as_json: bool) -> None:
    """Job counts per queue and state."""
    try:
        with Client(dsn) as client:
            rows = client.stats()
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))
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

    table = Table("queue", "pending", "processing", "failed", "completed", "dead", "cancelled", "oldest due")
    for r in rows:
        table.add_row(
            r.queue_name,
            *(str(n) for n in (r.pending, r.processing, r.failed, r.completed, r.dead, r.cancelled)),
            r.oldest_due_at.isoformat(timespec="seconds") if r.oldest_due_at else "-",
        )
    Console().print(table)


@main.command("reap")
@dsn_option
def reap_command(dsn: str) -> None:
    """Reclaim jobs whose lease expired; print how many."""
    try:
        with Client(dsn) as client:
            click.echo(client.reap())
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))


@main.command("purge")
@dsn_option
@click.option("--older-than", type=float, required=True, help="Age in seconds of finished jobs to delete.")
@click.option("--include-dead", is_flag=True, help="Delete dead jobs too.")
def purge_command(dsn: str, older_than: float, include_dead: bool) -> None:
    """Delete finished jobs older than --older-than seconds; print how many."""
    try:
        with Client(dsn) as client:
            click.echo(client.purge(timedelta(seconds=older_than), include_dead))
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))


@main.command("cancel")
@dsn_option
@click.argument("job_id", type=int)
def cancel_command(dsn: str, job_id: int) -> None:
    """Cancel a pending, failed or processing job."""
    try:
        with Client(dsn) as client:
            done = client.cancel(job_id)
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))
    if not done:
        _fail(f"job {job_id} is not pending, failed or processing")
    click.echo(f"cancelled job {job_id}")


@main.command("replay")
@dsn_option
@click.argument("job_id", type=int)
def replay_command(dsn: str, job_id: int) -> None:
    """Put a dead or cancelled job back to pending."""
    try:
        with Client(dsn) as client:
            done = client.replay(job_id)
    except (psycopg.Error, OpenQueueError) as exc:
        _fail(str(exc))
    if not done:
        _fail(f"job {job_id} is not dead or cancelled")
    click.echo(f"replayed job {job_id}")


if __name__ == "__main__":  # pragma: no cover
    main()
