"""Client and AsyncClient: limited_queues, the oq_limited_queues the worker runtime calls (schema 8)."""

from __future__ import annotations

import asyncio

import pytest

from openqueue_py import AsyncClient, Client
from openqueue_py.errors import InvalidArgument


def test_client_names_the_queues_with_limits(client: Client) -> None:
    assert client.limited_queues(["a", "b"]) == []
    client.set_queue_limits("b", max_running=2)
    client.set_queue_limits("a", rate_limit=5)
    client.pause_queue("c")
    assert client.limited_queues(["c", "b", "a", "d"]) == ["a", "b"]
    client.set_queue_limits("a")
    assert client.limited_queues(["a", "b"]) == ["b"]


def test_async_client_names_the_queues_with_limits(dsn: str) -> None:
    async def run() -> list[str]:
        async with AsyncClient(dsn) as client:
            await client.set_queue_limits("x", max_running=1)
            return await client.limited_queues(["x", "y"])

    assert asyncio.run(run()) == ["x"]


@pytest.mark.parametrize("queue_names", [None, "ok", ["ok", 3]])
def test_bad_queue_names_raise_before_sql(client: Client, queue_names) -> None:
    with pytest.raises(InvalidArgument, match="queue_names"):
        client.limited_queues(queue_names)


def test_a_null_element_is_the_databases_to_judge(client: Client) -> None:
    client.set_queue_limits("ok", max_running=1)
    assert client.limited_queues(["ok", None]) == ["ok"]  # NULL names no queue
