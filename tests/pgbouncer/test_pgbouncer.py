"""OpenQueue through PgBouncer in transaction pooling mode.

Every client call is one autocommit statement, so it is one transaction and
needs nothing of the session. What a pooler cannot carry is psycopg's
automatic server-side prepared statements (a statement prepared on one
server connection is executed on another): connections to a pooler use
``prepare_threshold=None``. LISTEN needs a direct connection.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from openqueue_py import AsyncClient, Client, JobState, Worker, _sql

from .conftest import Bouncer

# Parameters PgBouncer itself sets on its server connections (it tracks them per client).
POOLER_TRACKED = {
    "client_encoding",
    "datestyle",
    "timezone",
    "standard_conforming_strings",
    "application_name",
}
NOT_CLIENT_CALLS = {"connection", "close"}


def _public_methods(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def _every_method(client: Client) -> set[str]:
    """Call every Client method once, checking each answer; return the names called."""
    called: set[str] = set()

    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        called.add(name)
        return getattr(client, name)(*args, **kwargs)

    call("install")
    assert call("configure_queue", "pb", max_attempts=2, lease_seconds=30) is None
    assert call("set_queue_notify", "pb", "always") is None
    assert call("set_queue_max_payload", "pb", 65536) is None
    assert call("schema_version") >= 3
    first = call("enqueue", "pb", {"n": 0}, idempotency_key="k")
    assert call("enqueue", "pb", {"n": 0}, idempotency_key="k") == first
    batch = call("enqueue_batch", "pb", [{"n": n} for n in range(1, 5)])
    leased = call("lease", "pb", "w")
    assert leased is not None and leased.job.id == first
    assert call("heartbeat", leased.job.id, leased.lease_token, 60) is not None
    assert call("ack", leased.job.id, leased.lease_token, {"ok": True}) is True
    many = call("lease_many", "pb", "w", batch_size=3)
    assert len(many) == 3
    assert call("ack_many", [many[0].job.id], [many[0].lease_token]) == [many[0].job.id]
    assert call("settled", many[0].job.id, "w", many[0].job.attempts) == "completed"
    for dead in many[1:]:
        assert call("nack", dead.job.id, dead.lease_token, "boom", retry=False) == "dead"
    assert call("replay", many[1].job.id) is True
    assert call("cancel", batch[-1]) is True
    assert call("reap") == 0
    assert call("next_run_at", ["pb"]) is None
    assert call("wait", ["pb"], "w", seconds=1) is None
    assert call("get_job", first).status is JobState.COMPLETED
    stats = {s.queue_name: s for s in call("stats")}
    pb = stats["pb"]
    assert (pb.pending, pb.completed, pb.dead, pb.cancelled) == (1, 2, 1, 1)
    assert call("purge", timedelta(0)) == 3  # completed and cancelled
    assert call("purge_batch", timedelta(0), include_dead=True, max_rows=10) == 1  # the dead one
    assert call("health")
    # the operators' reads (CLI, dashboard)
    replayed = many[1].job.id  # the one job left: pending again
    assert [j.id for j in call("list_jobs", queue_name="pb", status="pending")] == [replayed]
    assert call("count_jobs", queue_name="pb") == 1
    assert call("replay_many", [replayed]) == []  # pending: nothing to replay
    # contract sections 7 and 8
    assert call("schedule", "pb-nightly", "0 2 * * *", "pb") is None
    assert [s.schedule_name for s in call("list_schedules")] == ["pb-nightly"]
    assert call("cron_next", "0 2 * * *", datetime(2024, 1, 1, tzinfo=UTC)) == datetime(
        2024, 1, 1, 2, 0, tzinfo=UTC
    )
    assert call("tick") == 0
    assert call("unschedule", "pb-nightly") is True
    assert call("pause_queue", "pb") is True
    assert call("lease", "pb", "w") is None
    assert call("resume_queue", "pb") is True
    assert call("set_queue_limits", "pb", max_running=1) is None
    assert {s.queue_name: s.max_running for s in call("queue_settings")}["pb"] == 1
    assert call("limited_queues", ["pb", "other"]) == ["pb"]
    # contract section 10, on one PostgreSQL: no nodes, and distribute says Citus is missing
    assert call("nodes") == []
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        call("distribute")
    return called


def test_every_client_method_works_through_pgbouncer(pooled_dsn: str) -> None:
    with Client(pooled_dsn, prepare_threshold=None) as client:
        called = _every_method(client)
    assert called == _public_methods(Client) - NOT_CLIENT_CALLS


def test_every_async_client_method_works_through_pgbouncer(pooled_dsn: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(pooled_dsn, prepare_threshold=None) as client:
            job_id = await client.enqueue("pb", {})
            leased = await client.lease("pb", "w")
            assert leased is not None and leased.job.id == job_id
            assert await client.heartbeat(job_id, leased.lease_token) is not None
            assert await client.ack(job_id, leased.lease_token) is True
            assert [s.completed for s in await client.stats()] == [1]
            assert (await client.get_job(job_id)).status is JobState.COMPLETED

    asyncio.run(scenario())


def test_many_calls_from_several_clients_never_miss_a_prepared_statement(
    pgbouncer: Bouncer, pooled_dsn: str, dsn: str
) -> None:
    # 4 clients x 2 connections over 3 server connections, each statement run
    # far more often than psycopg's prepare threshold.
    errors: list[BaseException] = []
    rounds = 40

    def produce_and_consume(n: int) -> None:
        try:
            with Client(pooled_dsn, prepare_threshold=None, max_size=2) as client:
                for i in range(rounds):
                    client.enqueue("many", {"client": n, "i": i})
                    leased = client.lease("many", f"w{n}")
                    if leased is not None:
                        client.heartbeat(leased.job.id, leased.lease_token)
                        assert client.ack(leased.job.id, leased.lease_token) is True
                    client.stats()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce_and_consume, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(dsn) as direct:
        (count,) = direct.execute("select count(*) from openqueue.jobs").fetchone()
    assert count == 4 * rounds
    assert "prepared statement" not in pgbouncer.log.read_text()


def _session_state(conn: psycopg.Connection) -> dict[str, list[Any]]:
    """What a session could carry from one transaction to the next, on the server connection."""
    queries = {
        "prepared statements": "select name from pg_prepared_statements",
        "settings": "select name from pg_settings where source = 'session'",
        "listening": "select pg_listening_channels()",
        "advisory locks": "select objid from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
        "temporary tables": "select relname from pg_class where relnamespace = pg_my_temp_schema()",
    }
    state = {what: [row[0] for row in conn.execute(query).fetchall()] for what, query in queries.items()}
    state["settings"] = [name for name in state["settings"] if name.lower() not in POOLER_TRACKED]
    return state


def test_no_session_state_is_left_on_the_server_connection(
    single_server_connection: Bouncer, dsn: str
) -> None:
    bouncer_dsn = single_server_connection.dsn(dsn)
    # Every call of this test runs on the pooler's ONE server connection.
    with Client(bouncer_dsn, prepare_threshold=None, max_size=3) as client:
        _every_method(client)
        _worker_path(bouncer_dsn, jobs=10)
        with client.connection() as conn:
            assert _session_state(conn) == {
                "prepared statements": [],
                "settings": [],
                "listening": [],
                "advisory locks": [],
                "temporary tables": [],
            }


def _worker_path(bouncer_dsn: str, *, jobs: int) -> None:
    """The worker runtime's statements (lease, heartbeat, batched ack, exclusive reap) through the pooler."""
    with (
        psycopg.connect(bouncer_dsn, autocommit=True, prepare_threshold=None) as one,
        psycopg.connect(bouncer_dsn, autocommit=True, prepare_threshold=None) as two,
    ):

        def run(conn: psycopg.Connection, call: _sql.Call[Any]) -> Any:
            return call.decode(conn.execute(call.query, call.params).fetchall())

        run(one, _sql.enqueue_batch("wp", [{"n": n} for n in range(jobs)], None, None, None))
        done = 0
        for turn in range(jobs):
            conn = (one, two)[turn % 2]
            leased = run(
                conn, _sql.lease_timed("wp", "w", 30, 2, durable=turn % 2 == 0)
            )  # the worker default: not durable
            if not leased:
                break
            assert all(0 < left <= 30 for _, left in leased)
            ids, tokens = [job.job.id for job, _ in leased], [job.lease_token for job, _ in leased]
            beats = run((two, one)[turn % 2], _sql.heartbeat_many(ids, tokens, 30))
            assert sorted(b[0] for b in beats) == sorted(ids) and all(b[1] is not None for b in beats)
            results = [json.dumps({"done": i}) for i in ids]
            assert sorted(run(conn, _sql.ack_many_json(ids, tokens, results))) == sorted(ids)
            done += len(ids)
            assert run(conn, _sql.reap_exclusive()) == 0
        assert done == jobs
        assert run(one, _sql.next_run_in(["wp"])) is None


def test_the_worker_lease_heartbeat_and_ack_statements_work_through_pgbouncer(pooled_dsn: str) -> None:
    _worker_path(pooled_dsn, jobs=40)


def test_a_worker_through_pgbouncer_with_a_direct_listen_dsn(pooled_dsn: str, dsn: str) -> None:
    with Client(dsn) as client:
        ids = client.enqueue_batch("through", [{"n": n} for n in range(30)])
        done: set[int] = set()

        def handle(job: Any) -> None:
            done.add(job.id)

        worker = Worker(
            pooled_dsn,
            {"through": handle},
            listen_dsn=dsn,
            prepare_threshold=None,
            concurrency=4,
            poll_interval=30,
            handle_signals=False,
        )
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(done) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.05)
            # Woken by NOTIFY on the direct connection, not the 30 s poll.
            late = client.enqueue("through", {"late": True})
            deadline = time.monotonic() + 10
            while late not in done and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
            thread.join(timeout=30)
        assert done == {*ids, late}
        assert {s.queue_name: s.completed for s in client.stats()} == {"through": 31}
