"""The completer logs the truth about each run it settles, against a real database."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from openqueue_py import Client
from openqueue_py.worker.completer import Completer
from openqueue_py.worker.connections import Connections
from openqueue_py.worker.jobs import Run

from .conftest import make_worker, running, wait_until


def test_one_job_leased_twice_by_the_same_worker_is_logged_completed_once(
    dsn: str, client: Client, events: Any
) -> None:
    """Both runs finished and wait in one batch: only the current token's run is completed.

    Seen in a chaos run: a worker's ack was stuck across an outage while the
    lease expired; the same worker leased the job again, and both acks went
    out together. oq_ack_many answers with ids, so they must not share a batch.
    """
    job_id = client.enqueue("twice", {})
    first = client.lease("twice", "w", lease_seconds=1)
    assert first is not None
    time.sleep(1.1)
    assert client.reap() == 1
    second = client.lease("twice", "w", lease_seconds=30)
    assert second is not None and second.job.id == job_id

    async def scenario() -> None:
        conns = Connections(dsn, max_size=2)
        core = SimpleNamespace(
            worker_id="w",
            conns=conns,
            check_idle=lambda: None,
            fetcher=SimpleNamespace(schedule_changed=lambda: None),
        )
        completer = Completer(core, flush_size=10, flush_interval=0.01)  # type: ignore[arg-type]
        completer.ack(Run(first, beat_at=0.0, beat_every=1.0), {"run": 1}, 0.1)
        completer.ack(Run(second, beat_at=0.0, beat_every=1.0), {"run": 2}, 0.1)
        completer.flush_now()
        while completer.busy:
            await asyncio.sleep(0.01)
        await conns.close()

    asyncio.run(scenario())
    completed = events.named("job.completed", job_id=job_id)
    rejected = events.named("job.ack_rejected", job_id=job_id)
    assert [r.attempt for r in completed] == [2]
    assert [r.attempt for r in rejected] == [1]
    record = client.get_job(job_id)
    assert record.status == "completed" and record.result == {"run": 2}


def test_a_handler_error_with_a_nul_character_is_nacked_with_it_escaped(dsn: str, conn: Any) -> None:
    def handler(job) -> None:
        raise RuntimeError("bad\x00byte")

    job_id = conn.execute("select openqueue.oq_enqueue('nul', '{}', max_attempts => 1)").fetchone()[0]
    with running(make_worker(dsn, {"nul": handler})):
        wait_until(
            lambda: conn.execute(
                "select status = 'dead' from openqueue.jobs where id = %s", (job_id,)
            ).fetchone()[0],
            timeout=30,
            what="the job to be nacked to dead",
        )
    error = conn.execute(
        "select errors -> 0 ->> 'error' from openqueue.jobs where id = %s", (job_id,)
    ).fetchone()[0]
    assert error.startswith("RuntimeError: bad\\x00byte")
