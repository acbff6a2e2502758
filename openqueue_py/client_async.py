"""The asyncio client: the same methods as Client, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import _connect, _sql
from .errors import ConnectionFailed, OpenQueueError
from .migrate import install_async
from .models import HealthCheck, JobRecord, Leased, QueueSettings, QueueStats, Schedule

T = TypeVar("T")


class AsyncClient:
    """The asyncio twin of :class:`openqueue_py.Client`.

    ``source`` is a DSN (a small pool is opened on first use and closed by
    :meth:`close` or ``async with``), a ``psycopg_pool.AsyncConnectionPool``,
    or a single ``psycopg.AsyncConnection``. Every method also takes ``conn=``
    to run inside the caller's own transaction.
    """

    def __init__(
        self,
        source: str | psycopg.AsyncConnection | AsyncConnectionPool,
        *,
        min_size: int = 1,
        max_size: int = 10,
        prepare_threshold: int | None = _connect.DEFAULT_PREPARE_THRESHOLD,
    ) -> None:
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection | None = None
        self._pool: AsyncConnectionPool | None = None
        self._dsn: str | None = None
        self._owns_pool = False
        self._closed = False
        if isinstance(source, str):
            # Opened on first use; see _open_pool.
            self._dsn = source
            self._sizes = (min_size, max_size)
            self._kwargs = {
                "autocommit": True,
                "prepare_threshold": prepare_threshold,
                **_connect.connect_kwargs(source),
            }
            self._owns_pool = True
        elif isinstance(source, AsyncConnectionPool):
            self._pool = source
        elif isinstance(source, psycopg.AsyncConnection):
            self._conn = source
        else:
            raise TypeError(
                f"AsyncClient needs a DSN, an AsyncConnectionPool or an AsyncConnection, not {source!r}"
            )

    # -- connection handling ------------------------------------------------

    async def _open_pool(self) -> AsyncConnectionPool:
        """The pool for a DSN, opened once a first connection proved the DSN good (see Client)."""
        assert self._dsn is not None
        await (await _connect.connect_async(self._dsn, **self._kwargs)).close()
        min_size, max_size = self._sizes
        pool = AsyncConnectionPool(
            self._dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=self._kwargs,
            check=AsyncConnectionPool.check_connection,
            open=False,
            name="openqueue",
        )
        try:
            await pool.open(wait=True, timeout=_connect.POOL_OPEN_TIMEOUT)
        except PoolTimeout as exc:
            await pool.close()
            raise ConnectionFailed(
                f"cannot connect to PostgreSQL: {min_size} pool connections not open "
                f"within {_connect.POOL_OPEN_TIMEOUT} s"
            ) from exc
        return pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """Borrow a connection (from the pool, or the single one)."""
        if self._conn is not None:
            async with self._lock:
                yield self._conn
            return
        if self._closed:
            raise OpenQueueError("this client is closed; create a new one")
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    self._pool = await self._open_pool()
        try:
            conn = await self._pool.getconn()
        except PoolTimeout:
            if self._dsn is not None:  # all busy, or the server gone? Ask it once, to say which.
                await (await _connect.connect_async(self._dsn, **self._kwargs)).close()
            raise
        try:
            async with conn:  # what AsyncConnectionPool.connection() does: end a transaction left open
                yield conn
        finally:
            await self._pool.putconn(conn)

    async def _run(self, call: _sql.Call[T], conn: psycopg.AsyncConnection | None) -> T:
        if conn is not None:
            with _connect.schema_errors():
                cursor = await conn.execute(call.query, call.params)
                return call.decode(await cursor.fetchall())
        async with self.connection() as own:
            with _connect.schema_errors():
                cursor = await own.execute(call.query, call.params)
                return call.decode(await cursor.fetchall())

    async def close(self) -> None:
        """Close the pool this client opened (not one it was given); final."""
        self._closed = True
        if self._owns_pool and self._pool is not None:
            await self._pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the API ------------------------------------------------------------

    async def install(self) -> None:
        """Install or upgrade the schema (same as ``psql -f sql/openqueue.sql``)."""
        async with self.connection() as conn:
            await install_async(conn)

    async def enqueue(
        self,
        queue_name: str,
        payload: Any,
        priority: int | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> int:
        call = _sql.enqueue(queue_name, payload, priority, run_at, max_attempts, idempotency_key)
        return await self._run(call, conn)

    async def enqueue_batch(
        self,
        queue_name: str,
        payloads: Sequence[Any],
        priority: int | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[int]:
        call = _sql.enqueue_batch(queue_name, payloads, priority, run_at, max_attempts)
        return await self._run(call, conn)

    async def lease(
        self,
        queue_name: str,
        worker_id: str,
        lease_seconds: int | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> Leased | None:
        leased = await self._run(_sql.lease(queue_name, worker_id, lease_seconds, 1), conn)
        return leased[0] if leased else None

    async def lease_many(
        self,
        queue_name: str,
        worker_id: str,
        lease_seconds: int | None = None,
        batch_size: int = 1,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[Leased]:
        return await self._run(_sql.lease(queue_name, worker_id, lease_seconds, batch_size), conn)

    async def heartbeat(
        self,
        job_id: int,
        lease_token: UUID | str,
        lease_seconds: int | None = None,
        queue_name: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> datetime | None:
        return await self._run(_sql.heartbeat(job_id, lease_token, lease_seconds, queue_name), conn)

    async def ack(
        self,
        job_id: int,
        lease_token: UUID | str,
        result: Any = None,
        queue_name: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> bool:
        return await self._run(_sql.ack(job_id, lease_token, result, queue_name), conn)

    async def ack_many(
        self,
        job_ids: Sequence[int],
        lease_tokens: Sequence[UUID | str],
        results: Sequence[Any] | None = None,
        queue_name: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[int]:
        return await self._run(_sql.ack_many(job_ids, lease_tokens, results, queue_name), conn)

    async def nack(
        self,
        job_id: int,
        lease_token: UUID | str,
        error: str | None = None,
        retry_in: timedelta | None = None,
        retry: bool = True,
        queue_name: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> str | None:
        return await self._run(_sql.nack(job_id, lease_token, error, retry_in, retry, queue_name), conn)

    async def reap(self, *, conn: psycopg.AsyncConnection | None = None) -> int:
        return await self._run(_sql.reap(), conn)

    async def cancel(self, job_id: int, *, conn: psycopg.AsyncConnection | None = None) -> bool:
        return await self._run(_sql.cancel(job_id), conn)

    async def replay(self, job_id: int, *, conn: psycopg.AsyncConnection | None = None) -> bool:
        return await self._run(_sql.replay(job_id), conn)

    async def configure_queue(
        self,
        queue_name: str,
        max_attempts: int | None = None,
        lease_seconds: int | None = None,
        backoff_base: timedelta | None = None,
        backoff_max: timedelta | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> None:
        call = _sql.configure_queue(queue_name, max_attempts, lease_seconds, backoff_base, backoff_max)
        await self._run(call, conn)

    async def stats(self, *, conn: psycopg.AsyncConnection | None = None) -> list[QueueStats]:
        return await self._run(_sql.stats(), conn)

    async def purge(
        self,
        older_than: timedelta,
        include_dead: bool = False,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> int:
        return await self._run(_sql.purge(older_than, include_dead), conn)

    async def purge_batch(
        self,
        older_than: timedelta,
        include_dead: bool = False,
        max_rows: int | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> int:
        return await self._run(_sql.purge_batch(older_than, include_dead, max_rows), conn)

    async def set_queue_notify(
        self, queue_name: str, mode: str, *, conn: psycopg.AsyncConnection | None = None
    ) -> None:
        return await self._run(_sql.set_queue_notify(queue_name, mode), conn)

    async def wait(
        self,
        queue_names: Sequence[str],
        worker_id: str,
        seconds: int | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> None:
        return await self._run(_sql.wait(queue_names, worker_id, seconds), conn)

    async def health(self, *, conn: psycopg.AsyncConnection | None = None) -> list[HealthCheck]:
        return await self._run(_sql.health(), conn)

    async def next_run_at(
        self, queue_names: Sequence[str], *, conn: psycopg.AsyncConnection | None = None
    ) -> datetime | None:
        return await self._run(_sql.next_run_at(queue_names), conn)

    async def limited_queues(
        self, queue_names: Sequence[str], *, conn: psycopg.AsyncConnection | None = None
    ) -> list[str]:
        """Which of queue_names have a max_running or a rate_limit, sorted (``oq_limited_queues``)."""
        return await self._run(_sql.limited_queues(queue_names), conn)

    async def set_queue_max_payload(
        self, queue_name: str, max_bytes: int | None = None, *, conn: psycopg.AsyncConnection | None = None
    ) -> None:
        """Largest payload (bytes of its JSON text) queue_name accepts; None: the default, 1 MiB."""
        await self._run(_sql.set_queue_max_payload(queue_name, max_bytes), conn)

    async def schema_version(self, *, conn: psycopg.AsyncConnection | None = None) -> int:
        """The installed schema version (what ``oq_schema_version()`` returns)."""
        return await self._run(_sql.schema_version(), conn)

    async def distribute(self, *, conn: psycopg.AsyncConnection | None = None) -> None:
        """Citus: distribute the tables by queue_name and route the hot path (``oq_distribute``)."""
        return await self._run(_sql.distribute(), conn)

    async def nodes(self, *, conn: psycopg.AsyncConnection | None = None) -> list[tuple[str, int, bool]]:
        """Citus: the cluster's nodes as (host, port, is_coordinator) (``oq_nodes``); [] without Citus."""
        return await self._run(_sql.nodes(), conn)

    async def settled(
        self, job_id: int, worker_id: str, attempt: int, *, conn: psycopg.AsyncConnection | None = None
    ) -> str | None:
        """What became of job_id since worker_id leased it for attempt (``oq_settled``); None if re-leased."""
        return await self._run(_sql.settled(job_id, worker_id, attempt), conn)

    async def get_job(self, job_id: int, *, conn: psycopg.AsyncConnection | None = None) -> JobRecord | None:
        return await self._run(_sql.get_job(job_id), conn)

    async def list_jobs(
        self,
        queue_name: str | None = None,
        status: str | None = None,
        older_than: timedelta | None = None,
        newer_than: timedelta | None = None,
        limit: int | None = 50,
        offset: int = 0,
        after_id: int | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[JobRecord]:
        """Rows of ``openqueue.jobs``, newest first, filtered and paged (never the lease token).

        ``status``: a state name; ``older_than`` / ``newer_than``: the job's
        age (``created_at``) compared with now(); ``limit`` None: every match;
        ``after_id``: keyset paging, only jobs listed after that id (smaller ids).
        """
        call = _sql.list_jobs(queue_name, status, older_than, newer_than, limit, offset, after_id)
        return await self._run(call, conn)

    async def count_jobs(
        self,
        queue_name: str | None = None,
        status: str | None = None,
        older_than: timedelta | None = None,
        newer_than: timedelta | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> int:
        """How many jobs :meth:`list_jobs` would return with no limit."""
        return await self._run(_sql.count_jobs(queue_name, status, older_than, newer_than), conn)

    async def replay_many(
        self, job_ids: Sequence[int], *, conn: psycopg.AsyncConnection | None = None
    ) -> list[int]:
        """``oq_replay`` for each id in one statement; the ids replayed (those dead or cancelled)."""
        return await self._run(_sql.replay_many(job_ids), conn)

    async def schedule(
        self,
        schedule_name: str,
        cron: str,
        queue_name: str,
        payload: Any = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timezone: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> None:
        """Create or replace a recurring schedule (``oq_schedule``); None: the SQL default."""
        call = _sql.schedule(schedule_name, cron, queue_name, payload, priority, max_attempts, timezone)
        await self._run(call, conn)

    async def unschedule(self, schedule_name: str, *, conn: psycopg.AsyncConnection | None = None) -> bool:
        """Delete a schedule (``oq_unschedule``); False when there is none."""
        return await self._run(_sql.unschedule(schedule_name), conn)

    async def cron_next(
        self,
        cron: str,
        after: datetime,
        timezone: str | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> datetime:
        """The first slot of cron strictly after ``after``, read in timezone (``oq_cron_next``)."""
        return await self._run(_sql.cron_next(cron, after, timezone), conn)

    async def tick(
        self, as_of: datetime | None = None, *, conn: psycopg.AsyncConnection | None = None
    ) -> int:
        """Fire the schedules due at as_of (None: now); the number of jobs enqueued (``oq_tick``)."""
        return await self._run(_sql.tick(as_of), conn)

    # -- flow control (contract section 8) --

    async def pause_queue(self, queue_name: str, *, conn: psycopg.AsyncConnection | None = None) -> bool:
        """Pause queue_name: leases return nothing until resume_queue. True when it was not paused."""
        return await self._run(_sql.pause_queue(queue_name), conn)

    async def resume_queue(self, queue_name: str, *, conn: psycopg.AsyncConnection | None = None) -> bool:
        """Resume queue_name (and wake its workers). True when it was paused."""
        return await self._run(_sql.resume_queue(queue_name), conn)

    async def set_queue_limits(
        self,
        queue_name: str,
        max_running: int | None = None,
        rate_limit: int | None = None,
        rate_period: timedelta | None = None,
        *,
        conn: psycopg.AsyncConnection | None = None,
    ) -> None:
        """Set both limits exactly (None: no limit); rate_period None: 1 second."""
        await self._run(_sql.set_queue_limits(queue_name, max_running, rate_limit, rate_period), conn)

    async def queue_settings(self, *, conn: psycopg.AsyncConnection | None = None) -> list[QueueSettings]:
        """Every queue with settings of its own, defaults filled in (``oq_queue_settings``)."""
        return await self._run(_sql.queue_settings(), conn)

    async def list_schedules(self, *, conn: psycopg.AsyncConnection | None = None) -> list[Schedule]:
        """Every schedule of ``openqueue.schedules``, by name, with its next and last run."""
        return await self._run(_sql.list_schedules(), conn)
