"""The asyncio AsyncClient against a real database: the same round trips as Client.

Each test runs its scenario with ``asyncio.run``: no pytest plugin needed.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from openqueue_py import (
    AsyncClient,
    HealthCheck,
    InvalidArgument,
    Job,
    JobRecord,
    JobState,
    Leased,
    OpenQueueError,
    QueueStats,
)


async def _now(client: AsyncClient) -> datetime:
    async with client.connection() as conn:
        cursor = await conn.execute("select now()")
        return (await cursor.fetchone())[0]


async def _sql(client: AsyncClient, query: str, *params) -> list[tuple]:
    async with client.connection() as conn:
        cursor = await conn.execute(query, params or None)
        return await cursor.fetchall() if cursor.description else []


def test_seed_example_async(dsn):
    sent = []

    async def scenario() -> None:
        async with AsyncClient(dsn) as client:
            job_id = await client.enqueue(queue_name="send_email", payload={"to": "user@example.com"})
            leased = await client.lease(queue_name="send_email", worker_id="worker-1")
            if leased:
                sent.append(leased.job.payload)
                assert await client.ack(leased.job.id, leased.lease_token) is True
            assert (await client.get_job(job_id)).status is JobState.COMPLETED

    asyncio.run(scenario())
    assert sent == [{"to": "user@example.com"}]


def test_round_trips(dsn):
    async def scenario() -> None:
        async with AsyncClient(dsn) as client:
            assert await client.lease("q", "w") is None
            assert await client.lease_many("q", "w", batch_size=3) == []
            assert await client.stats() == []

            run_at = await _now(client) + timedelta(hours=1)
            later = await client.enqueue("q", {"n": 0}, priority=1, run_at=run_at, max_attempts=2)
            assert type(later) is int
            record = await client.get_job(later)
            assert isinstance(record, JobRecord)
            assert record.run_at == run_at and record.max_attempts == 2 and record.priority == 1
            assert await client.next_run_at(["q"]) == run_at

            key = await client.enqueue("q", {"n": 1}, idempotency_key="k")
            assert await client.enqueue("q", {"n": 1}, idempotency_key="k") == key

            ids = await client.enqueue_batch("q", [{"n": 2}, {"n": 3}], priority=5, max_attempts=3)
            assert isinstance(ids, list) and len(ids) == 2 and all(type(i) is int for i in ids)
            assert await client.enqueue_batch("q", []) == []

            first = await client.lease("q", "w1", lease_seconds=60)
            assert isinstance(first, Leased) and isinstance(first.job, Job)
            assert isinstance(first.lease_token, uuid.UUID)
            job = first.job
            assert (job.id, job.queue_name, job.payload, job.priority) == (ids[0], "q", {"n": 2}, 5)
            assert (job.attempts, job.max_attempts) == (1, 3)
            assert isinstance(job.run_at, datetime) and isinstance(job.created_at, datetime)

            rest = await client.lease_many("q", "w2", batch_size=5)
            assert isinstance(rest, list)
            assert [x.job.id for x in rest] == [ids[1], key]  # priority, then age; `later` is not due

            expiry = await client.heartbeat(job.id, first.lease_token, lease_seconds=600)
            assert isinstance(expiry, datetime) and expiry > first.lease_expires_at
            assert await client.heartbeat(job.id, uuid.uuid4()) is None

            assert await client.ack(job.id, first.lease_token, result={"ok": 1}) is True
            assert await client.ack(job.id, first.lease_token) is False
            assert (await client.get_job(job.id)).result == {"ok": 1}

            second, third = rest
            outcome = await client.nack(second.job.id, second.lease_token, "boom", retry_in=timedelta(0))
            assert outcome == "failed"
            assert (await client.get_job(second.job.id)).status is JobState.FAILED
            again = await client.lease("q", "w")
            assert again.job.id == second.job.id and again.job.attempts == 2
            assert await client.nack(second.job.id, again.lease_token, "x", retry=False) == "dead"
            assert await client.nack(second.job.id, again.lease_token) is None

            await _sql(
                client,
                "update openqueue.live_jobs set lease_expires_at = now() - interval '1 s' where id = %s",
                third.job.id,
            )
            assert await client.reap() == 1
            reaped = await client.get_job(third.job.id)
            assert reaped.status is JobState.PENDING and reaped.errors[-1]["error"] == "lease expired"
            assert await client.ack(third.job.id, third.lease_token) is False

            assert await client.cancel(third.job.id) is True
            assert await client.cancel(third.job.id) is False
            assert await client.replay(third.job.id) is True
            assert await client.replay(third.job.id) is False
            assert await client.replay(second.job.id) is True  # dead -> pending
            assert (await client.get_job(second.job.id)).attempts == 0

            await client.configure_queue(
                "conf",
                max_attempts=1,
                lease_seconds=45,
                backoff_base=timedelta(seconds=3),
                backoff_max=timedelta(minutes=2),
            )
            rows = await _sql(
                client,
                "select max_attempts, lease_seconds, backoff_base, backoff_max "
                "from openqueue.queues where queue_name = 'conf'",
            )
            assert rows == [(1, 45, timedelta(seconds=3), timedelta(minutes=2))]

            stats = await client.stats()
            assert all(isinstance(s, QueueStats) for s in stats)
            by_queue = {s.queue_name: s for s in stats}
            assert set(by_queue) == {"q", "conf"}
            q = by_queue["q"]
            assert (q.pending, q.processing, q.failed, q.completed, q.dead, q.cancelled) == (3, 0, 0, 1, 0, 0)

            await _sql(client, "update openqueue.finished_jobs set finished_at = now() - interval '2 h'")
            assert await client.purge(timedelta(hours=1)) == 1
            assert await client.purge(timedelta(hours=1), include_dead=True) == 0
            assert await client.get_job(job.id) is None

            more = await client.enqueue_batch("m", [{}, {}])
            pair = await client.lease_many("m", "w", batch_size=2)
            tokens = [pair[0].lease_token, uuid.uuid4()]
            assert await client.ack_many(more, tokens, [{"r": 1}, None]) == [more[0]]
            assert (await client.get_job(more[0])).result == {"r": 1}
            assert await client.ack_many(more, [x.lease_token for x in pair]) == [more[1]]
            assert (await client.get_job(more[1])).status is JobState.COMPLETED

            await client.install()  # a no-op on an installed database
            assert (await client.get_job(later)).status is JobState.PENDING

    asyncio.run(scenario())


def test_enqueue_with_async_conn_is_atomic(dsn, conn):
    conn.execute("create table public.orders (id integer primary key, job_id bigint)")

    async def scenario() -> int:
        async with AsyncClient(dsn) as client:
            listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            async with listener:
                await listener.execute("LISTEN openqueue")
                async with await psycopg.AsyncConnection.connect(dsn) as c:
                    async with c.transaction():
                        await c.execute("insert into public.orders (id) values (1)")
                        job_id = await client.enqueue("orders", {"order": 1}, conn=c)
                        assert await client.get_job(job_id) is None  # not visible before commit
                        raise psycopg.Rollback
                    assert await client.get_job(job_id) is None
                    assert [n async for n in listener.notifies(timeout=0.5)] == []

                    async with c.transaction():
                        job_id = await client.enqueue("orders", {"order": 2}, conn=c)
                        await c.execute("insert into public.orders values (2, %s)", (job_id,))
                notes = [n async for n in listener.notifies(timeout=5.0, stop_after=1)]
                assert [(n.channel, n.payload) for n in notes] == [("openqueue", "orders")]
            return job_id

    job_id = asyncio.run(scenario())
    assert conn.execute("select id, job_id from public.orders").fetchall() == [(2, job_id)]
    assert conn.execute("select id from openqueue.jobs").fetchall() == [(job_id,)]


def test_bad_arguments_raise_before_sql(dsn):
    async def scenario() -> None:
        async with AsyncClient(dsn) as client, await psycopg.AsyncConnection.connect(dsn) as c:
            bad = [
                client.enqueue("q", {"x": object()}, conn=c),
                client.enqueue("q", {}, run_at=datetime(2030, 1, 1), conn=c),
                client.nack(1, uuid.uuid4(), retry_in=5, conn=c),
                client.enqueue(None, {}, conn=c),
                client.enqueue_batch("q", "not a list", conn=c),
                client.configure_queue("q", backoff_max=60, conn=c),
                client.ack_many([1], [uuid.uuid4()], [object()], conn=c),
                client.ack_many(None, [], conn=c),
            ]
            for coroutine in bad:
                with pytest.raises(InvalidArgument) as info:
                    await coroutine
                assert isinstance(info.value, ValueError) and isinstance(info.value, OpenQueueError)
                assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

            with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
                await client.enqueue("", {})
            assert info.value.sqlstate == "22023" and not isinstance(info.value, OpenQueueError)
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                await client.lease_many("q", "w", batch_size=0)
            with pytest.raises(psycopg.errors.InvalidParameterValue):
                await client.ack_many([1, 2], [uuid.uuid4()])

    asyncio.run(scenario())


def test_async_client_from_a_pool_and_from_a_connection(dsn, conn):
    async def scenario() -> tuple[int, int]:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2) as pool:
            async with AsyncClient(pool) as client:
                from_pool = await client.enqueue("src", {"from": "pool"})
                leased = await client.lease("src", "w")
                assert await client.ack(from_pool, leased.lease_token) is True
            assert not pool.closed
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as single:
            async with AsyncClient(single) as client:
                ids = await asyncio.gather(*(client.enqueue("src", {"n": n}) for n in range(10)))
                assert len(set(ids)) == 10
            assert not single.closed
        return from_pool, len(ids)

    from_pool, count = asyncio.run(scenario())
    assert conn.execute("select status from openqueue.jobs where id = %s", (from_pool,)).fetchone() == (
        "completed",
    )
    assert conn.execute("select count(*) from openqueue.jobs").fetchone()[0] == 1 + count


def test_async_client_closes_the_pool_it_owns(dsn, conn):
    def backends() -> int:
        return conn.execute(
            "select count(*) from pg_stat_activity "
            "where datname = current_database() and pid <> pg_backend_pid()"
            # clients only: on Citus the coordinator also holds Citus's own sessions, named citus_*
            " and backend_type = 'client backend' and application_name not like 'citus%'"
        ).fetchone()[0]

    async def scenario() -> None:
        async with AsyncClient(dsn, max_size=2) as client:
            await client.enqueue("src", {})
            assert 1 <= backends() <= 2

    asyncio.run(scenario())
    for _ in range(250):
        if backends() == 0:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert backends() == 0


def test_async_client_refuses_other_sources():
    with pytest.raises(TypeError):
        AsyncClient(object())


def test_a_closed_async_client_says_so(dsn: str) -> None:
    async def scenario() -> None:
        client = AsyncClient(dsn)
        await client.enqueue("closing", {})
        await client.close()
        with pytest.raises(OpenQueueError, match="closed"):
            await client.enqueue("closing", {})

    asyncio.run(scenario())


def test_async_purge_batch_set_queue_notify_wait_and_health(dsn):
    async def scenario() -> None:
        async with AsyncClient(dsn) as client:
            assert await client.purge_batch(timedelta(hours=1), include_dead=True, max_rows=10) == 0
            assert await client.set_queue_notify("q", "always") is None
            assert await client.wait(["q"], "w1", seconds=1) is None
            checks = await client.health()
            assert checks and all(isinstance(c, HealthCheck) for c in checks)

    asyncio.run(scenario())
