"""``openqueue dashboard``: the web dashboard (``openqueue_py.dashboard``)."""

from __future__ import annotations

import importlib

import click

from ._common import EXIT_FAILED, dsn_option, fail, reported


@click.command("dashboard", short_help="Serve the web dashboard (read-only by default).")
@dsn_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8080, show_default=True)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Enable the replay and cancel buttons (read-only without it).",
)
def dashboard_command(dsn: str, host: str, port: int, allow_actions: bool) -> None:
    """Serve the web dashboard until Ctrl-C: queues, throughput, dead jobs, job details."""
    try:
        dashboard = importlib.import_module("openqueue_py.dashboard")
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        if missing in ("openqueue_py.dashboard", "openqueue_py"):
            fail("the dashboard is not part of this installation of openqueue", EXIT_FAILED)
        fail(
            f"the dashboard needs a package that is not installed ({exc}): "
            "pip install 'openqueue[dashboard]'",
            EXIT_FAILED,
        )
    click.echo(
        f"openqueue dashboard on http://{host}:{port}/ "
        f"({'actions enabled' if allow_actions else 'read-only'}); Ctrl-C stops it",
        err=True,
    )
    try:
        with reported():
            dashboard.serve(dsn, host=host, port=port, allow_actions=allow_actions)
    except KeyboardInterrupt:
        pass
