"""An ack or nack whose reply is lost: the worker finds out what happened and logs the truth.

A small TCP proxy sits between the completer and the server. Armed with a
statement's name, it forwards that statement, waits until the server's whole
reply has arrived (ReadyForQuery: the autocommit statement has committed),
then closes the worker's side instead of delivering it. The worker sees a
lost connection, retries, is told "not held" (its own first call settled the
job) and must ask ``oq_settled`` rather than log ``job.ack_rejected``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from openqueue_py import Client, Fail
from openqueue_py.worker.completer import Completer
from openqueue_py.worker.connections import Connections
from openqueue_py.worker.jobs import Run

READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery, then the transaction status byte


class ReplyDropper:
    """Forward PostgreSQL traffic; once armed, swallow the reply to the first matching statement."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self.dsn = dsn
        self.armed: bytes | None = None
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.host.startswith("/"):
            return await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
        return await asyncio.open_connection(self.host, self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await self._open_upstream()
        swallow = asyncio.Event()

        async def upstream() -> None:
            seen = b""
            while data := await client_r.read(65536):
                if self.armed is not None:
                    seen = (seen + data)[-65536:]
                    if self.armed in seen:
                        self.armed = None
                        swallow.set()
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            reply = b""
            while data := await server_r.read(65536):
                if swallow.is_set():
                    reply += data
                    if READY in reply:  # committed on the server: lose the reply
                        self.dropped += 1
                        break
                    continue
                client_w.write(data)
                await client_w.drain()
            client_w.close()
            server_w.close()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        client_w.close()
        server_w.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        try:
            yield make_conninfo(self.dsn, host="127.0.0.1", port=str(port), sslmode="disable")
        finally:
            self._server.close()


def completer_for(dsn: str, worker_id: str) -> tuple[Completer, Connections]:
    conns = Connections(dsn, max_size=2)
    core = SimpleNamespace(
        worker_id=worker_id,
        conns=conns,
        check_idle=lambda: None,
        fetcher=SimpleNamespace(schedule_changed=lambda: None),
    )
    return Completer(core, flush_size=10, flush_interval=0.01), conns  # type: ignore[arg-type]


async def settle(completer: Completer) -> None:
    completer.flush_now()
    while completer.busy:
        await asyncio.sleep(0.01)


def test_an_ack_whose_reply_is_lost_is_logged_completed_not_rejected(
    dsn: str, client: Client, events: Any
) -> None:
    job_id = client.enqueue("lost-reply", {})
    other = client.enqueue("lost-reply", {})
    leases = client.lease_many("lost-reply", "w", batch_size=2)
    assert {lease.job.id for lease in leases} == {job_id, other}
    proxy = ReplyDropper(dsn)

    async def scenario() -> None:
        async with proxy.serving() as proxied:
            completer, conns = completer_for(proxied, "w")
            proxy.armed = b"oq_ack_many"
            for lease in leases:
                completer.ack(Run(lease, beat_at=0.0, beat_every=1.0), {"id": lease.job.id}, 0.1)
            await asyncio.wait_for(settle(completer), 60)
            await conns.close()

    asyncio.run(scenario())
    assert proxy.dropped == 1, "the proxy never lost an ack's reply"
    assert events.named("job.settle_retry", job_id=job_id), "the worker never saw the lost connection"
    for lease in leases:
        jid = lease.job.id
        assert [r.outcome for r in events.named("job.completed", job_id=jid)] == ["completed"]
        assert events.named("job.ack_rejected", job_id=jid) == []
        assert [r.status for r in events.named("job.settle_recovered", job_id=jid)] == ["completed"]
        record = client.get_job(jid)
        assert record is not None and record.status == "completed" and record.result == {"id": jid}


def test_a_nack_whose_reply_is_lost_is_logged_as_the_nack_decided(
    dsn: str, client: Client, events: Any
) -> None:
    retried = client.enqueue("lost-nack", {})
    dead = client.enqueue("lost-nack", {})
    leases = {lease.job.id: lease for lease in client.lease_many("lost-nack", "w", batch_size=2)}
    proxy = ReplyDropper(dsn)

    async def scenario() -> None:
        async with proxy.serving() as proxied:
            completer, conns = completer_for(proxied, "w")
            for job_id, failure in ((retried, RuntimeError("boom")), (dead, Fail("no"))):
                proxy.armed = b"oq_nack"
                completer.nack(Run(leases[job_id], beat_at=0.0, beat_every=1.0), failure, 0.1)
                await asyncio.wait_for(settle(completer), 60)
            await conns.close()

    asyncio.run(scenario())
    assert proxy.dropped == 2, "the proxy did not lose both nacks' replies"
    assert [r.outcome for r in events.named("job.failed", job_id=retried)] == ["failed"]
    assert [r.outcome for r in events.named("job.dead", job_id=dead)] == ["dead"]
    assert events.named("job.ack_rejected") == []
    assert client.get_job(retried).status == "failed"
    assert client.get_job(dead).status == "dead"


def test_a_lost_reply_for_a_job_leased_again_since_is_still_ack_rejected(
    dsn: str, client: Client, conn: Any, events: Any
) -> None:
    """The resolution step itself: a job another worker leased since is not ours to call completed."""
    ours = client.enqueue("resolve", {})
    taken = client.enqueue("resolve", {})
    leases = {lease.job.id: lease for lease in client.lease_many("resolve", "w", batch_size=2)}
    assert client.ack(ours, leases[ours].lease_token)  # as if our first, lost-reply ack did it
    conn.execute(
        "update openqueue.jobs set lease_expires_at = now() - interval '1 minute' where id = %s", (taken,)
    )
    assert client.reap() == 1
    again = client.lease("resolve", "someone-else")
    assert again is not None and again.job.id == taken

    async def scenario() -> None:
        completer, conns = completer_for(dsn, "w")
        assert await completer.settled(Run(leases[ours], beat_at=0.0, beat_every=1.0)) == "completed"
        assert await completer.settled(Run(leases[taken], beat_at=0.0, beat_every=1.0)) is None
        batch = [(Run(leases[i], beat_at=0.0, beat_every=1.0), None, 0.1) for i in (ours, taken)]
        await completer._flush(batch, unknown=True)  # the retry after a lost reply: nothing acked
        await conns.close()

    asyncio.run(scenario())
    assert [r.outcome for r in events.named("job.completed", job_id=ours)] == ["completed"]
    assert events.named("job.ack_rejected", job_id=ours) == []
    assert [r.outcome for r in events.named("job.ack_rejected", job_id=taken)] == ["lease_lost"]
    assert events.named("job.completed", job_id=taken) == []
