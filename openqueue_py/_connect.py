"""Where connections come from, and what goes wrong opening them.

A DSN, a psycopg connection, or a pool. Opening a connection from a DSN
fails fast and clearly: a ``connect_timeout`` applies unless the DSN (or
``PGCONNECT_TIMEOUT``) sets one, and a failure is a :class:`ConnectionFailed`
carrying the server's reason on one line. A call that finds no ``openqueue``
schema raises :class:`NotInstalled` instead of the catalog error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import NOT_INSTALLED_MESSAGE, ConnectionFailed, InvalidArgument, NotInstalled

ConnectionSource = str | psycopg.Connection

# Seconds libpq waits for each address of the host to answer, unless the DSN
# says otherwise. A host that exists answers, or refuses, within milliseconds.
DEFAULT_CONNECT_TIMEOUT = 5

# Seconds a Client waits for its pool's first connections once one connection
# has already succeeded (so only a server at max_connections makes it wait).
POOL_OPEN_TIMEOUT = 10.0

# psycopg's own default: a statement is prepared on the server after its
# fifth execution on a connection. ``None`` never prepares (PgBouncer in
# transaction pooling mode before 1.21 needs that).
DEFAULT_PREPARE_THRESHOLD: int | None = 5


def connect_kwargs(dsn: str) -> dict[str, Any]:
    """The settings OpenQueue adds to a DSN: a connect timeout unless one is given."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise InvalidArgument(f"the DSN is not valid: {one_line(str(exc))}") from exc
    if "connect_timeout" in given or os.environ.get("PGCONNECT_TIMEOUT"):
        return {}
    return {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}


def one_line(message: str) -> str:
    """A libpq message on one line: whitespace collapsed, the generic hint dropped."""
    lines = (" ".join(line.split()) for line in message.splitlines())
    kept = [line for line in lines if line and not line.startswith("Is the server running")]
    return "; ".join(kept) or message.strip()


def connection_failed(exc: psycopg.OperationalError) -> ConnectionFailed:
    reason = one_line(str(exc)).removeprefix("connection failed: ")
    return ConnectionFailed(f"cannot connect to PostgreSQL: {reason}")


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    """``psycopg.connect`` with OpenQueue's defaults; a failure is a ConnectionFailed."""
    options = {**connect_kwargs(dsn), **kwargs}
    try:
        return psycopg.connect(dsn, **options)
    except psycopg.OperationalError as exc:
        raise connection_failed(exc) from exc


async def connect_async(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection:
    """:func:`connect` for asyncio."""
    options = {**connect_kwargs(dsn), **kwargs}
    try:
        return await psycopg.AsyncConnection.connect(dsn, **options)
    except psycopg.OperationalError as exc:
        raise connection_failed(exc) from exc


def _missing_schema(exc: psycopg.Error) -> str | None:
    """The NotInstalled message for an error that says OpenQueue's objects are missing, else None."""
    primary = exc.diag.message_primary or ""
    if exc.sqlstate == "3F000" and primary == 'schema "openqueue" does not exist':
        return NOT_INSTALLED_MESSAGE
    if exc.sqlstate in ("42883", "42P01") and ("function openqueue." in primary or '"openqueue.' in primary):
        # The schema exists but lacks what this package calls: an older version.
        return (
            f"openqueue is not installed in this database, or an older version is ({primary}): "
            "run `openqueue install`"
        )
    return None


@contextmanager
def schema_errors() -> Iterator[None]:
    """Turn "schema openqueue does not exist" and its kin into :class:`NotInstalled`."""
    try:
        yield
    except psycopg.Error as exc:
        message = _missing_schema(exc)
        if message is None:
            raise
        raise NotInstalled(message) from exc


@contextmanager
def connection_from(source: ConnectionSource, *, autocommit: bool) -> Iterator[psycopg.Connection]:
    """Yield a connection for ``source``.

    A DSN opens a fresh connection that is closed afterwards. A connection is
    lent as it is (when idle, its autocommit mode is set for the duration and
    then restored), and never closed.
    """
    if isinstance(source, str):
        with connect(source, autocommit=autocommit) as conn:
            yield conn
        return
    if not isinstance(source, psycopg.Connection):
        raise TypeError(f"expected a DSN string or a psycopg.Connection, got {type(source).__name__}")
    idle = source.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if source.autocommit == autocommit or not idle:
        yield source
        return
    previous = source.autocommit
    source.autocommit = autocommit
    try:
        yield source
    finally:
        source.autocommit = previous
