"""Enqueue a job inside a SQLAlchemy session's transaction.

The job goes through the session's own psycopg connection (``conn=``), so it
commits with the session's writes, or rolls back with them: no job for an
order that was never saved, and no saved order without its job.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from openqueue_py import Client


def make_engine(dsn: str) -> Engine:
    # Any "postgresql+psycopg://" URL works; a creator reuses a libpq DSN as it is.
    return create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))


def place_order(session: Session, client: Client, order_id: int) -> int:
    """Save the order and enqueue its receipt in the session's transaction; return the job id."""
    session.execute(text("insert into orders (id) values (:id)"), {"id": order_id})
    conn = session.connection().connection.driver_connection  # the session's psycopg connection
    return client.enqueue("send_receipt", {"order": order_id}, conn=conn)


def example(dsn: str) -> None:
    engine = make_engine(dsn)
    with Client(dsn) as client, Session(engine) as session, session.begin():
        place_order(session, client, 42)  # both commit when the block ends, or neither
    engine.dispose()
