"""oq_settled through Client.settled and AsyncClient.settled: what became of a job since our lease."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from openqueue_py import AsyncClient, Client, InvalidArgument


def test_settled_is_the_status_while_nobody_leased_the_job_since(client: Client) -> None:
    acked = client.enqueue("s", {"n": 1})
    nacked = client.enqueue("s", {"n": 2})
    dead = client.enqueue("s", {"n": 3}, max_attempts=1)
    held = client.enqueue("s", {"n": 4})
    leases = {lease.job.id: lease for lease in client.lease_many("s", "w1", batch_size=4)}
    assert set(leases) == {acked, nacked, dead, held}
    assert client.ack(acked, leases[acked].lease_token, {"r": 1})
    assert client.nack(nacked, leases[nacked].lease_token, "boom") == "failed"
    assert client.nack(dead, leases[dead].lease_token, "boom") == "dead"

    assert client.settled(acked, "w1", 1) == "completed"
    assert client.settled(nacked, "w1", 1) == "failed"
    assert client.settled(dead, "w1", 1) == "dead"
    assert client.settled(held, "w1", 1) == "processing"
    assert client.cancel(held)
    assert client.settled(held, "w1", 1) == "cancelled"


def test_settled_is_none_for_another_worker_another_attempt_or_an_unknown_job(client: Client) -> None:
    job_id = client.enqueue("s", {})
    first = client.lease("s", "w1", lease_seconds=1)
    assert first is not None
    time.sleep(1.1)
    assert client.reap() == 1
    assert client.settled(job_id, "w1", 1) == "pending"  # reaped, nobody leased it since
    second = client.lease("s", "w2")
    assert second is not None and second.job.id == first.job.id == job_id
    assert client.ack(job_id, second.lease_token)
    assert client.settled(job_id, "w1", 1) is None  # w2 leased it since
    assert client.settled(job_id, "w2", 1) is None  # w2's was attempt 2
    assert client.settled(job_id, "w2", 2) == "completed"
    assert client.settled(job_id + 1000, "w2", 2) is None


def test_settled_refuses_null_arguments_naming_them(client: Client, conn: psycopg.Connection) -> None:
    for args, name in (("null, 'w', 1", "job_id"), ("1, null, 1", "worker_id"), ("1, 'w', null", "attempt")):
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match=name):
            conn.execute(f"select openqueue.oq_settled({args})")
        conn.rollback()
    with pytest.raises(InvalidArgument, match="worker_id"):
        client.settled(1, None, 1)  # type: ignore[arg-type]


def test_async_settled_answers_like_the_sync_one(dsn: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(dsn) as client:
            job_id = await client.enqueue("s", {})
            leased = await client.lease("s", "w1")
            assert leased is not None
            assert await client.settled(job_id, "w1", 1) == "processing"
            assert await client.ack(job_id, leased.lease_token)
            assert await client.settled(job_id, "w1", 1) == "completed"
            assert await client.settled(job_id, "w9", 1) is None

    asyncio.run(scenario())
