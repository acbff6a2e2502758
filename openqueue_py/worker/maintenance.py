"""Reaping expired leases and firing schedules, by one worker at a time.

Every worker runs this loop every ``reap_interval`` seconds, so a crashed
worker's jobs come back without an external scheduler. The call takes a
transaction-level advisory lock with ``pg_try_advisory_xact_lock`` in the same
statement as ``oq_reap()``: while one worker reaps, the others skip at once
instead of scanning the same expired leases (or waiting for each other).

The tick loop does the same for ``oq_tick()`` every ``tick_interval`` seconds,
so recurring schedules fire with no other scheduler; oq_tick is safe under
concurrent calls anyway (each slot is enqueued once), the lock only spares
the other workers the work.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import psycopg

from .. import _sql
from .connections import TRANSIENT
from .logging import log

if TYPE_CHECKING:
    from ._core import Core


async def reap_loop(core: Core, interval: float) -> None:
    call = _sql.reap_exclusive()
    while True:
        try:
            count = await core.conns.run(call)
        except (*TRANSIENT, psycopg.Error) as exc:
            log(logging.DEBUG, "worker.db_error", worker_id=core.worker_id, error=str(exc).strip())
        else:
            if count:  # None: another worker holds the lock and is reaping
                log(logging.INFO, "worker.reaped", worker_id=core.worker_id, count=count)
                core.fetcher.mark_all_ready()
        await asyncio.sleep(interval)


async def tick_loop(core: Core, interval: float) -> None:
    call = _sql.tick_exclusive()
    while True:
        try:
            count = await core.conns.run(call)
        except (*TRANSIENT, psycopg.Error) as exc:
            log(logging.DEBUG, "worker.db_error", worker_id=core.worker_id, error=str(exc).strip())
        else:
            if count:  # None: another worker holds the lock and is ticking
                log(logging.INFO, "worker.ticked", worker_id=core.worker_id, count=count)
                core.fetcher.mark_all_ready()
        await asyncio.sleep(interval)
