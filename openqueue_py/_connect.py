"""Where connections come from: a DSN, a psycopg connection, or a pool."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ConnectionSource = str | psycopg.Connection


@contextmanager
def connection_from(source: ConnectionSource, *, autocommit: bool) -> Iterator[psycopg.Connection]:
    """Yield a connection for ``source``.

    A DSN opens a fresh connection that is closed afterwards. A connection is
    lent as it is (when idle, its autocommit mode is set for the duration and
    then restored), and never closed.
    """
    if isinstance(source, str):
        with psycopg.connect(source, autocommit=autocommit) as conn:
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
