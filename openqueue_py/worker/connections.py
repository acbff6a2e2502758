"""The worker's database connections: a few autocommit connections, and how calls run on them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from .._connect import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PREPARE_THRESHOLD
from .._sql import Call

T = TypeVar("T")


class NodeUnavailable(psycopg.OperationalError):
    """A Citus node the call needed was lost mid-call; Citus reported it as an internal error.

    Citus reports most node failures as ``08006`` (``connection to the remote
    node ... failed``), an ``OperationalError`` already. The loss of a
    connection that had written in the call's transaction comes as ``XX000``
    ``failure on connection marked as essential`` instead, one lost before
    the commit of a single-node write as ``XX000`` ``could not commit
    transaction for shard ...``, and a connection lost while a result was
    awaited may come as ``XX000`` with libpq's text. The call's outcome is
    that of a lost connection (rolled back, or unknown when the commit was
    under way: an ack then asks oq_settled, and a lease that did commit
    comes back through its expiry), so it is retried like one.
    """


# Errors after which the same call may well succeed: the connection dropped,
# the server is restarting, a pool or socket timed out, a Citus node was lost.
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, OSError)

# The texts of Citus's XX000 reports of a lost node connection (remote_transaction.c,
# remote_commands.c ReportResultError with libpq's message).
_NODE_LOST = (
    "failure on connection marked as essential",
    "could not commit transaction for shard",
    "server closed the connection unexpectedly",
    "connection not open",
    "terminating connection due to",
)


def node_unavailable(exc: BaseException) -> bool:
    """True for a Citus ``XX000`` that reports a lost connection to a node (see :class:`NodeUnavailable`)."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate != "XX000":
        return False
    primary = exc.diag.message_primary or ""
    return any(text in primary for text in _NODE_LOST)


# SQLSTATEs the lease call raises for a bad argument: a worker configured
# with them can never lease anything, so run() raises WorkerError.
CONFIG_SQLSTATES = {"22023", "22004"}


class Backoff:
    """Capped exponential backoff with a little jitter."""

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self.failures))
        self.failures += 1
        return delay * random.uniform(0.9, 1.1)

    def reset(self) -> bool:
        """Forget the failures; True if there were any."""
        had, self.failures = self.failures > 0, 0
        return had


def connect_kwargs(dsn: str) -> dict[str, Any]:
    """Connection settings a long-running worker wants unless the DSN says otherwise."""
    given = conninfo_to_dict(dsn)
    wanted: dict[str, Any] = {
        "application_name": "openqueue-worker",
        # A host that does not answer is given up soon; the worker's backoff retries.
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        # A peer that vanished without closing the socket is noticed within a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    return {k: v for k, v in wanted.items() if k not in given}


async def connect(
    dsn: str, prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
) -> psycopg.AsyncConnection:
    """An autocommit connection: every call is one statement, one transaction.

    psycopg prepares a statement after its ``prepare_threshold``-th execution
    on a connection, which the hot path's few fixed statements reach at once;
    ``None`` never prepares (PgBouncer in transaction pooling mode before 1.21).
    """
    return await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, prepare_threshold=prepare_threshold, **connect_kwargs(dsn)
    )


async def close_quietly(conn: psycopg.AsyncConnection) -> None:
    with suppress(Exception):
        await conn.close()


class Connections:
    """A few autocommit connections, opened on demand and dropped once broken.

    Deliberately simpler than a pool: a connection that failed is closed at
    once and the next call opens a fresh one, so reconnecting follows the
    worker's own backoff and nothing waits on a pool's reconnect schedule.
    """

    def __init__(
        self, dsn: str, max_size: int, prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    ) -> None:
        self._dsn = dsn
        self._prepare_threshold = prepare_threshold
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots = asyncio.Semaphore(max_size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self._slots:
            conn = None
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if candidate.closed or candidate.broken:
                    await close_quietly(candidate)
                else:
                    conn = candidate
            if conn is None:
                conn = await connect(self._dsn, self._prepare_threshold)
            try:
                yield conn
            finally:
                reusable = (
                    not conn.closed
                    and not conn.broken
                    and conn.info.transaction_status == TransactionStatus.IDLE
                )
                if reusable:
                    self._idle.append(conn)
                else:
                    await close_quietly(conn)

    async def run(self, call: Call[T]) -> T:
        """One statement on a borrowed connection, decoded.

        A Citus node lost mid-call raises :class:`NodeUnavailable` (transient).
        """
        async with self.connection() as conn:
            try:
                cursor = await conn.execute(call.query, call.params)
                rows = await cursor.fetchall()
            except psycopg.Error as exc:
                if node_unavailable(exc):
                    raise NodeUnavailable(str(exc).strip()) from exc
                raise
            return call.decode(rows)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await close_quietly(conn)
