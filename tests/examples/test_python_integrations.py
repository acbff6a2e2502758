"""The Python integrations of examples/integrations/: SQLAlchemy, Django, a handler's own transaction.

Each enqueue commits with the caller's write or rolls back with it; a handler
that acks in its own transaction commits its write and the completion
together, or neither (and the job is retried).
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from worker.conftest import Events, job_row, make_worker, running, wait_until

from openqueue_py import AsyncClient, Client, LeaseGone


def _jobs(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute("select queue_name, payload, status from openqueue.jobs order by id").fetchall()


def _orders(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("select id from orders order by id").fetchall()]


@pytest.fixture
def orders(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("create table orders (id bigint primary key)")
    return conn


def test_sqlalchemy_session_enqueue_commits_and_rolls_back_with_the_session(
    dsn: str, client: Client, orders: psycopg.Connection
) -> None:
    pytest.importorskip("sqlalchemy", reason="SQLAlchemy is in the dev extra: pip install -e '.[dev]'")
    from sqlalchemy.orm import Session

    from examples.integrations.sqlalchemy_app import example, make_engine, place_order

    example(dsn)  # the example as shown: order 42 and its job, committed together
    assert _orders(orders) == [42]
    assert _jobs(orders) == [("send_receipt", {"order": 42}, "pending")]

    engine = make_engine(dsn)
    try:
        with Session(engine) as session:
            session.begin()
            job_id = place_order(session, client, 43)
            # Inside the transaction: neither is visible to anyone else yet.
            assert _orders(orders) == [42]
            assert client.get_job(job_id) is None
            session.rollback()
        assert _orders(orders) == [42]
        assert _jobs(orders) == [("send_receipt", {"order": 42}, "pending")]

        with Session(engine) as session, session.begin():
            place_order(session, client, 44)
        assert _orders(orders) == [42, 44]
        assert [p for _, p, _ in _jobs(orders)] == [{"order": 42}, {"order": 44}]
    finally:
        engine.dispose()


def _configure_django(dsn: str) -> None:
    from django.conf import settings

    params = conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
    }
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, USE_TZ=True)
        import django

        django.setup()
    else:  # a later test in this process: point the default connection at this test's database
        from django.db import connections

        connections["default"].close()
        settings.DATABASES["default"].update(database)
        connections["default"].settings_dict.update(database)


def test_django_atomic_block_enqueue_commits_and_rolls_back_with_the_block(
    dsn: str, client: Client, orders: psycopg.Connection
) -> None:
    pytest.importorskip("django", reason="Django is in the dev extra: pip install -e '.[dev]'")
    _configure_django(dsn)
    from django.db import connection, transaction

    from examples.integrations.django_app import place_order

    try:
        job_id = place_order(client, 42)
        assert connection.vendor == "postgresql" and isinstance(connection.connection, psycopg.Connection)
        assert _orders(orders) == [42]
        assert client.get_job(job_id).payload == {"order": 42}

        class Abort(Exception):
            pass

        with pytest.raises(Abort), transaction.atomic():
            place_order(client, 43)  # a nested atomic(): a savepoint inside the outer block
            raise Abort
        assert _orders(orders) == [42]
        assert _jobs(orders) == [("send_receipt", {"order": 42}, "pending")]
    finally:
        connection.close()


def _receipts(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("create table receipts (order_id bigint, attempt int)")
    return conn


def test_a_handler_acking_in_its_transaction_commits_its_write_and_the_completion_together(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    from examples.integrations.handler_transaction import receipt_handler

    _receipts(conn)
    job_id = client.enqueue("send_receipt", {"order": 42})
    worker = make_worker(dsn, {"send_receipt": receipt_handler(dsn)}, poll_interval=0.2)
    with running(worker):
        wait_until(lambda: events.named("job.completed", job_id=job_id), timeout=60, what="job.completed")
    row = job_row(conn, job_id)
    assert (row["status"], row["attempts"], row["result"]) == ("completed", 1, {"receipt_for": 42})
    assert conn.execute("select order_id, attempt from receipts").fetchall() == [(42, 1)]
    # The worker saw the handler's ack and did not ack again (a second ack would be rejected).
    assert len(events.named("job.completed", job_id=job_id)) == 1
    assert not events.named("job.ack_rejected") and not events.named("job.lease_lost")


def test_a_handler_whose_transaction_rolls_back_leaves_neither_write_nor_completion_and_is_retried(
    dsn: str, client: Client, conn: psycopg.Connection, events: Events
) -> None:
    from examples.integrations.handler_transaction import receipt_handler

    _receipts(conn)
    # The first attempt's COMMIT fails (a deferred check), after its insert and its ack_in ran.
    conn.execute(
        """
        create function refuse_first() returns trigger language plpgsql as $$
        begin
            if new.attempt = 1 then raise exception 'commit refused for attempt 1'; end if;
            return null;
        end $$;
        create constraint trigger refuse_first after insert on receipts
            deferrable initially deferred for each row execute function refuse_first();
        """
    )
    client.configure_queue("send_receipt", backoff_base=timedelta(milliseconds=100))
    job_id = client.enqueue("send_receipt", {"order": 42})
    worker = make_worker(dsn, {"send_receipt": receipt_handler(dsn)}, poll_interval=0.2)
    with running(worker):
        wait_until(lambda: job_row(conn, job_id)["status"] == "completed", timeout=60, what="the retry")
    row = job_row(conn, job_id)
    # Attempt 1: its receipt and its completion rolled back together, so the worker's nack held the lease.
    assert [e["attempt"] for e in row["errors"]] == [1]
    assert "commit refused for attempt 1" in row["errors"][0]["error"]
    assert len(events.named("job.failed", job_id=job_id, attempt=1)) == 1
    # Attempt 2 committed both.
    assert (row["attempts"], row["result"]) == (2, {"receipt_for": 42})
    assert conn.execute("select order_id, attempt from receipts").fetchall() == [(42, 2)]
    assert len(events.named("job.completed", job_id=job_id)) == 1
    assert not events.named("job.ack_rejected")


def test_ack_in_after_the_lease_was_lost_raises_lease_gone_and_the_write_rolls_back(
    dsn: str, client: Client, conn: psycopg.Connection
) -> None:
    _receipts(conn)
    job_id = client.enqueue("send_receipt", {"order": 42})
    leased = client.lease("send_receipt", "w1")
    assert leased is not None and client.cancel(job_id)
    with pytest.raises(LeaseGone), psycopg.connect(dsn) as own, own.transaction():
        own.execute("insert into receipts values (42, 1)")
        leased.job.ack_in(own)
    assert conn.execute("select count(*) from receipts").fetchone() == (0,)
    assert job_row(conn, job_id)["status"] == "cancelled"


async def _ack_in_async(dsn: str) -> int:
    async with AsyncClient(dsn) as client:
        job_id = await client.enqueue("send_receipt", {"order": 7})
        leased = await client.lease("send_receipt", "w1")
        assert leased is not None
        async with await psycopg.AsyncConnection.connect(dsn) as own, own.transaction():
            await own.execute("insert into receipts values (7, 1)")
            assert await leased.job.ack_in(own, result="ok") is True
        return job_id


def test_ack_in_with_an_async_connection_commits_with_the_write(dsn: str, conn: psycopg.Connection) -> None:
    import asyncio

    _receipts(conn)
    job_id = asyncio.run(_ack_in_async(dsn))
    assert conn.execute("select order_id from receipts").fetchall() == [(7,)]
    row = job_row(conn, job_id)
    assert (row["status"], row["result"]) == ("completed", "ok")
