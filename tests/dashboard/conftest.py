"""Fixtures for the dashboard tests: the app over a real database, and jobs in every state."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the dashboard tests need the 'dashboard' extra (starlette)")

from starlette.testclient import TestClient

from openqueue_py import Client
from openqueue_py.dashboard import create_app


@pytest.fixture
def dash(dsn: str) -> Iterator[TestClient]:
    """The dashboard, read-only (the default)."""
    with TestClient(create_app(dsn)) as http:
        yield http


@pytest.fixture
def dash_rw(dsn: str) -> Iterator[TestClient]:
    """The dashboard with allow_actions=True."""
    with TestClient(create_app(dsn, allow_actions=True)) as http:
        yield http


def make_dead(client: Client, queue: str, errors: list[str], payload: Any = None) -> int:
    """A job that failed once per entry of ``errors`` and is dead after the last."""
    job_id = client.enqueue(queue_name=queue, payload=payload or {"n": 1}, max_attempts=len(errors))
    for error in errors:
        leased = client.lease(queue_name=queue, worker_id="test-worker")
        assert leased is not None and leased.job.id == job_id
        outcome = client.nack(job_id, leased.lease_token, error=error, retry_in=None)
        if outcome == "failed":
            with client.connection() as conn:  # due again now, not after the backoff
                conn.execute("update openqueue.jobs set run_at = now() where id = %s", (job_id,))
    return job_id


def complete(client: Client, queue: str, result: Any = None, payload: Any = None) -> int:
    job_id = client.enqueue(queue_name=queue, payload=payload or {"ok": True})
    leased = client.lease(queue_name=queue, worker_id="test-worker")
    assert leased is not None and leased.job.id == job_id
    assert client.ack(job_id, leased.lease_token, result)
    return job_id


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)
