"""The client reads the CLI (and the dashboard) are built on: list_jobs, count_jobs, replay_many."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from openqueue_py import AsyncClient, InvalidArgument, JobRecord, JobState


def _dead(client, queue: str) -> int:
    job_id = client.enqueue(queue, {}, max_attempts=1, priority=100)  # leased before the others
    leased = client.lease(queue, "w")
    assert leased.job.id == job_id
    client.nack(job_id, leased.lease_token, "boom")
    return job_id


def test_list_and_count_jobs(client, conn, newest_first):
    a = client.enqueue("a", {"n": 1})
    b = client.enqueue("b", {"n": 2})
    dead = _dead(client, "a")
    conn.execute("update openqueue.live_jobs set created_at = now() - interval '2 hours' where id = %s", (a,))

    records = client.list_jobs()
    assert [r.id for r in records] == newest_first(a, b, dead)
    assert all(isinstance(r, JobRecord) for r in records)
    dead_record = next(r for r in records if r.id == dead)
    assert dead_record.status is JobState.DEAD and dead_record.errors[0]["error"] == "boom"
    assert [r.id for r in client.list_jobs(queue_name="a")] == [dead, a]
    assert [r.id for r in client.list_jobs(status="dead")] == [dead]
    assert [r.id for r in client.list_jobs(older_than=timedelta(hours=1))] == [a]
    assert [r.id for r in client.list_jobs(newer_than=timedelta(hours=1))] == newest_first(b, dead)
    assert [r.id for r in client.list_jobs(limit=1, offset=1)] == newest_first(a, b, dead)[1:2]
    assert [r.id for r in client.list_jobs(after_id=b)] == [i for i in newest_first(a, b, dead) if i < b]
    assert [r.id for r in client.list_jobs(limit=None)] == newest_first(a, b, dead)
    assert client.count_jobs() == 3
    assert client.count_jobs(queue_name="a", status="pending") == 1
    assert client.count_jobs(status="cancelled") == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "zombie"},
        {"status": 3},
        {"limit": 0},
        {"offset": -1},
        {"older_than": timedelta(seconds=-1)},
        {"newer_than": 5},
        {"after_id": "x"},
        {"queue_name": 7},
    ],
)
def test_list_jobs_bad_arguments(client, kwargs):
    with pytest.raises(InvalidArgument):
        client.list_jobs(**kwargs)


def test_replay_many(client):
    dead = [_dead(client, "r") for _ in range(3)]
    pending = client.enqueue("r", {})
    cancelled = client.enqueue("r", {})
    client.cancel(cancelled)
    replayed = client.replay_many([dead[2], pending, 999999, cancelled, dead[0]])
    assert replayed == [dead[2], cancelled, dead[0]]  # the order given; the others are absent
    assert client.get_job(dead[1]).status is JobState.DEAD
    assert client.get_job(dead[0]).status is JobState.PENDING
    assert client.replay_many([]) == []
    with pytest.raises(InvalidArgument):
        client.replay_many(None)
    with pytest.raises(InvalidArgument):
        client.replay_many([1, None])


def test_async_client_reads(dsn, client):
    dead = _dead(client, "x")

    async def main() -> tuple:
        async with AsyncClient(dsn) as aclient:
            return (
                [r.id for r in await aclient.list_jobs(status="dead")],
                await aclient.count_jobs(queue_name="x"),
                await aclient.replay_many([dead]),
            )

    assert asyncio.run(main()) == ([dead], 1, [dead])
