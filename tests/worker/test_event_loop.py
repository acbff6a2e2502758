"""The sync Worker's own event loop: uvloop's where installed, else asyncio's; loop_factory chooses."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import psycopg
import pytest

from openqueue_py import Client
from openqueue_py.worker import eventloop

from .conftest import make_worker, running, status_counts, wait_until

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _run_one_job(dsn: str, conn: psycopg.Connection, loop_factory) -> list[asyncio.AbstractEventLoop]:
    """A Worker runs one job on a loop from ``loop_factory``; returns the loops it created."""
    created: list[asyncio.AbstractEventLoop] = []

    def recording() -> asyncio.AbstractEventLoop:
        loop = loop_factory()
        created.append(loop)
        return loop

    worker = make_worker(dsn, {"loops": lambda job: {"ran": job.payload["n"]}})
    with running(worker, lambda: worker.run(loop_factory=recording)):
        with Client(dsn) as client:
            job_id = client.enqueue("loops", {"n": 7})
        wait_until(lambda: status_counts(conn).get("completed") == 1, what="the job to complete")
    result = conn.execute("select result from openqueue.jobs where id = %s", (job_id,)).fetchone()[0]
    assert result == {"ran": 7}
    return created


@pytest.mark.skipif(
    not HAS_UVLOOP, reason="uvloop is not installed here (it does not build on Windows or PyPy)"
)
def test_by_default_the_worker_runs_on_uvloop(dsn: str, conn: psycopg.Connection) -> None:
    import uvloop

    assert eventloop.default_loop_factory() is uvloop.new_event_loop
    created = _run_one_job(dsn, conn, eventloop.default_loop_factory())
    assert len(created) == 1 and isinstance(created[0], uvloop.Loop)


def test_loop_factory_chooses_asyncios_loop(dsn: str, conn: psycopg.Connection) -> None:
    created = _run_one_job(dsn, conn, asyncio.new_event_loop)
    assert len(created) == 1 and type(created[0]).__module__.startswith("asyncio")


def test_without_uvloop_the_default_is_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.default_loop_factory() is asyncio.new_event_loop
