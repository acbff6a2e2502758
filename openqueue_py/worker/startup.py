"""What ends a worker instead of being retried: checked once at startup, and on every failed lease.

At startup, before anything else, :func:`check` opens one connection (and
one to ``listen_dsn`` when it differs) and asks ``oq_schema_version()``: a
DSN that cannot connect raises :class:`ConnectionFailed`, a missing or older
schema :class:`NotInstalled`, a newer one :class:`SchemaTooNew`, a role
without the worker's privileges :class:`WorkerError`; each with a one-line
message: at once when the server answers with a refusal (no such role or
database, a wrong password), after ``UNREACHABLE_RETRY_SECONDS`` (2.5 s) of
retries when it does not answer at all (it may be restarting).

Once running, :func:`fatal` tells the errors no retry can cure (a privilege
revoked, the schema dropped, the role or database gone) from the transient
ones (a lost connection, a restart, ``57P01``/``57P02``/``57P03``,
serialization failures, timeouts), which the worker retries with capped
backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from .. import _connect, _sql
from ..errors import NotInstalled, OpenQueueError, SchemaTooNew, WorkerError
from ..migrate import latest_version
from .connections import Backoff, close_quietly, connect
from .logging import log

# Privilege denied; the schema, a function or a table missing; the role or database gone.
FATAL_SQLSTATES = {"42501", "3F000", "42883", "42P01", "28000", "28P01", "3D000"}


def fatal(exc: BaseException) -> OpenQueueError | None:
    """The error that ends the worker for ``exc``, or None when a retry may succeed."""
    if not isinstance(exc, psycopg.Error) or exc.sqlstate not in FATAL_SQLSTATES:
        return None
    missing = _connect._missing_schema(exc)
    if missing is not None:
        return NotInstalled(missing)
    primary = _connect.one_line(exc.diag.message_primary or str(exc))
    if exc.sqlstate == "42501":
        return WorkerError(
            f"{primary} (SQLSTATE 42501): the worker's role needs the openqueue_worker role "
            "(see README, Security and permissions)"
        )
    return WorkerError(f"{primary} (SQLSTATE {exc.sqlstate})")


# A server that does not answer at startup (refused, no socket, starting up or
# shutting down) may be restarting: retried for this long, then ConnectionFailed.
# A server that answers with a refusal (no such role or database, a wrong
# password) fails at once.
UNREACHABLE_RETRY_SECONDS = 2.5


def _unreachable(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "FATAL:" not in text or "the database system is" in text


async def _open(dsn: str, prepare_threshold: int | None) -> psycopg.AsyncConnection:
    deadline = time.monotonic() + UNREACHABLE_RETRY_SECONDS
    backoff = Backoff(first=0.1, cap=1.0)
    while True:
        try:
            return await connect(dsn, prepare_threshold)
        except psycopg.OperationalError as exc:
            delay = backoff.next()
            if not _unreachable(exc) or time.monotonic() + delay > deadline:
                raise _connect.connection_failed(exc) from exc
            if backoff.failures == 1:
                log(logging.DEBUG, "worker.db_error", error=_connect.one_line(str(exc)))
            await asyncio.sleep(delay)
        except psycopg.ProgrammingError as exc:  # a DSN libpq cannot parse
            raise _connect.connection_failed(psycopg.OperationalError(str(exc))) from exc


async def check(dsn: str, listen_dsn: str, prepare_threshold: int | None) -> int:
    """Connect, and check the installed schema version; returns it. See the module docstring."""
    conn = await _open(dsn, prepare_threshold)
    try:
        call = _sql.schema_version()
        try:
            cursor = await conn.execute(call.query, call.params)
            version = call.decode(await cursor.fetchall())
        except psycopg.Error as exc:
            error = fatal(exc)
            if error is None:
                raise
            raise error from exc
    finally:
        await close_quietly(conn)
    shipped = latest_version()
    if version > shipped:
        raise SchemaTooNew(
            f"openqueue schema version {version} is newer than this package (version {shipped}): "
            "upgrade openqueue"
        )
    if version < shipped:
        raise NotInstalled(
            f"openqueue schema version {version} is older than this package (version {shipped}): "
            "run `openqueue install`"
        )
    if listen_dsn != dsn:
        await close_quietly(await _open(listen_dsn, None))
    return version


async def cluster_nodes(dsn: str, prepare_threshold: int | None) -> list[tuple[str, int, bool]]:
    """The Citus cluster's nodes (host, port, is_coordinator) from oq_nodes(); none on one PostgreSQL.

    A routed call notifies on the node that ran it (contract section 10): the
    listener listens on each of them.
    """
    conn = await _open(dsn, prepare_threshold)
    try:
        call = _sql.nodes()
        cursor = await conn.execute(call.query, call.params)
        return call.decode(await cursor.fetchall())
    finally:
        await close_quietly(conn)
