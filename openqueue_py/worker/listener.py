"""The LISTEN connection: wakes the fetcher when jobs become due or are scheduled.

It uses ``listen_dsn`` (the worker's DSN unless given): LISTEN needs a
session of its own on the server, which a transaction pooler does not keep.

Channels, with a queue name as payload: ``openqueue`` when jobs became due
(oq_enqueue, oq_reap, oq_replay), ``openqueue_scheduled`` when a job was added
for later (oq_enqueue with a future run_at, oq_nack's retries).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from .connections import Backoff, close_quietly, connect
from .logging import log

if TYPE_CHECKING:
    from ._core import Core

DUE_CHANNEL = "openqueue"
SCHEDULED_CHANNEL = "openqueue_scheduled"
LISTEN_STATEMENT = f"listen {DUE_CHANNEL}; listen {SCHEDULED_CHANNEL}"


async def listen_loop(core: Core) -> None:
    backoff = Backoff()
    fetcher, handled = core.fetcher, core.handlers
    while True:
        conn: psycopg.AsyncConnection | None = None
        try:
            conn = await connect(core.listen_dsn)
            await conn.execute(LISTEN_STATEMENT)
            backoff.reset()
            log(logging.INFO, "worker.listening", worker_id=core.worker_id)
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
            log(level, "worker.listen_lost", worker_id=core.worker_id, error=str(exc).strip())
            await asyncio.sleep(backoff.next())
        finally:
            if conn is not None:
                await close_quietly(conn)
