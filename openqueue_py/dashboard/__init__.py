"""A small web dashboard for OpenQueue, and its Prometheus ``/metrics``.

``openqueue dashboard --dsn DSN`` (or :func:`serve`) shows every queue with
its counts by state and the age of its oldest due job, throughput and
failures over the last hour, the dead letters with their error history and
each job's details; with ``allow_actions`` it also replays and cancels jobs.
It reads through ``oq_stats()`` and ``openqueue.jobs`` (a role holding
``openqueue_admin`` is enough) and binds 127.0.0.1 unless told otherwise.

Needs the ``dashboard`` extra: ``pip install 'openqueue[dashboard]'``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app", "serve"]


def serve(dsn: str, host: str = "127.0.0.1", port: int = 8080, allow_actions: bool = False) -> None:
    """Run the dashboard until interrupted (blocks).

    Checks the database first, so that a wrong DSN or a missing schema raises
    :class:`ConnectionFailed` / :class:`NotInstalled` here, before anything listens.
    """
    import uvicorn

    from ..client import Client

    with Client(dsn, min_size=1, max_size=1) as client:
        client.stats()
    uvicorn.run(
        create_app(dsn, allow_actions=allow_actions),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        server_header=False,
    )
