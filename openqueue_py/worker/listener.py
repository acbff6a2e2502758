"""The LISTEN connection: wakes the fetcher when jobs become due or are scheduled.

It uses ``listen_dsn`` (the worker's DSN unless given): LISTEN needs a
session of its own on the server, which a transaction pooler does not keep.

Channels, with a queue name as payload: ``openqueue`` when jobs became due
(oq_enqueue, oq_reap, oq_replay), ``openqueue_scheduled`` when a job was added
for later (oq_enqueue with a future run_at, oq_nack's retries).

On a Citus cluster (contract section 10) a call routed to a worker node
notifies there: one LISTEN connection per node, the coordinator's through
``listen_dsn``, each worker node's through ``listen_dsn`` with that node's
host and port (:func:`node_dsns`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .connections import Backoff, close_quietly, connect
from .logging import log

if TYPE_CHECKING:
    from ._core import Core

DUE_CHANNEL = "openqueue"
SCHEDULED_CHANNEL = "openqueue_scheduled"
LISTEN_STATEMENT = f"listen {DUE_CHANNEL}; listen {SCHEDULED_CHANNEL}"


def node_dsns(listen_dsn: str, nodes: list[tuple[str, int, bool]]) -> list[str]:
    """Where to LISTEN: ``listen_dsn``, then every worker node of a Citus cluster (none on one PostgreSQL)."""
    dsns = [listen_dsn]
    for host, port, is_coordinator in nodes:
        if not is_coordinator:
            dsns.append(make_conninfo(listen_dsn, host=host, port=str(port)))
    return dsns


async def listen_all(core: Core) -> None:
    """One :func:`listen_loop` per node (see :func:`node_dsns`)."""
    dsns = node_dsns(core.listen_dsn, core.nodes)
    if len(dsns) == 1:
        await listen_loop(core, dsns[0])
        return
    tasks = [
        asyncio.create_task(listen_loop(core, dsn), name=f"openqueue-listen-{index}")
        for index, dsn in enumerate(dsns)
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def listen_loop(core: Core, dsn: str | None = None) -> None:
    backoff = Backoff()
    fetcher, handled = core.fetcher, core.handlers
    dsn = core.listen_dsn if dsn is None else dsn
    node = conninfo_to_dict(dsn).get("port", "")
    fields = {"port": node} if core.nodes else {}
    while True:
        conn: psycopg.AsyncConnection | None = None
        try:
            conn = await connect(dsn)
            await conn.execute(LISTEN_STATEMENT)
            backoff.reset()
            log(logging.INFO, "worker.listening", worker_id=core.worker_id, **fields)
            # Anything enqueued while we were not listening is found by a lease round.
            fetcher.mark_all_ready()
            async for notify in conn.notifies():
                if notify.payload not in handled:
                    continue
                if notify.channel == SCHEDULED_CHANNEL:
                    fetcher.schedule_changed()  # maybe sooner than the current timer
                else:
                    fetcher.mark_ready(notify.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            level = logging.WARNING if backoff.failures == 0 else logging.DEBUG
            log(level, "worker.listen_lost", worker_id=core.worker_id, error=str(exc).strip(), **fields)
            await asyncio.sleep(backoff.next())
        finally:
            if conn is not None:
                await close_quietly(conn)
