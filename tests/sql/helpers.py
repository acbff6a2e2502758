"""Thin wrappers that call the OpenQueue SQL functions with named-argument notation.

Deliberately not the Python client: this suite pins the SQL API itself. Every
wrapper builds ``openqueue.oq_x(arg => %s::type, ...)`` with exactly the
arguments a test passes, so omitted arguments take the SQL defaults.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# The documented argument names and their SQL types (CONTRACT.md section 3).
ARG_TYPES = {
    "queue_name": "text",
    "payload": "jsonb",
    "payloads": "jsonb",
    "priority": "integer",
    "run_at": "timestamptz",
    "max_attempts": "integer",
    "idempotency_key": "text",
    "worker_id": "text",
    "lease_seconds": "integer",
    "batch_size": "integer",
    "job_id": "bigint",
    "lease_token": "uuid",
    "result": "jsonb",
    "error": "text",
    "retry_in": "interval",
    "retry": "boolean",
    "backoff_base": "interval",
    "backoff_max": "interval",
    "older_than": "interval",
    "include_dead": "boolean",
    "job_ids": "bigint[]",
    "lease_tokens": "uuid[]",
    "results": "jsonb[]",
    "max_rows": "integer",
}

JSONB_ARGS = {"payload", "payloads", "result"}
JSONB_ARRAY_ARGS = {"results"}

# The columns openqueue.jobs must show (CONTRACT.md section 3).
DOCUMENTED_JOB_COLUMNS = (
    "id",
    "queue_name",
    "payload",
    "status",
    "priority",
    "run_at",
    "attempts",
    "max_attempts",
    "leased_by",
    "lease_expires_at",
    "result",
    "errors",
    "idempotency_key",
    "created_at",
    "finished_at",
)


def _param(name: str, value: Any) -> Any:
    if name in JSONB_ARGS and value is not None:
        return Jsonb(value)
    if name in JSONB_ARRAY_ARGS and value is not None:
        return [None if v is None else Jsonb(v) for v in value]
    return value


def call(conn: psycopg.Connection, function: str, /, **args: Any) -> psycopg.Cursor:
    """``select * from openqueue.<function>(name => value, ...)``; returns a dict-row cursor."""
    parts = [f"{name} => %s::{ARG_TYPES[name]}" for name in args]
    params = [_param(name, value) for name, value in args.items()]
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(f"select * from openqueue.{function}({', '.join(parts)})", params)


def scalar(conn: psycopg.Connection, function: str, /, **args: Any) -> Any:
    row = call(conn, function, **args).fetchone()
    assert row is not None
    (value,) = row.values()
    return value


def enqueue(conn: psycopg.Connection, queue_name: str = "q", payload: Any = None, **kw: Any) -> int:
    return scalar(conn, "oq_enqueue", queue_name=queue_name, payload={} if payload is None else payload, **kw)


def enqueue_batch(conn: psycopg.Connection, queue_name: str, payloads: Any, **kw: Any) -> list[int]:
    rows = call(conn, "oq_enqueue_batch", queue_name=queue_name, payloads=payloads, **kw).fetchall()
    return [row["oq_enqueue_batch"] for row in rows]


def lease(conn: psycopg.Connection, queue_name: str = "q", worker_id: str = "w1", **kw: Any) -> list[dict]:
    return call(conn, "oq_lease", queue_name=queue_name, worker_id=worker_id, **kw).fetchall()


def lease_one(conn: psycopg.Connection, queue_name: str = "q", worker_id: str = "w1", **kw: Any) -> dict:
    rows = lease(conn, queue_name, worker_id, **kw)
    assert len(rows) == 1, rows
    return rows[0]


def heartbeat(conn, job_id, lease_token, **kw) -> datetime | None:
    return scalar(conn, "oq_heartbeat", job_id=job_id, lease_token=lease_token, **kw)


def ack(conn, job_id, lease_token, **kw) -> bool:
    return scalar(conn, "oq_ack", job_id=job_id, lease_token=lease_token, **kw)


def ack_many(conn, job_ids, lease_tokens, **kw) -> list[int]:
    rows = call(conn, "oq_ack_many", job_ids=job_ids, lease_tokens=lease_tokens, **kw).fetchall()
    return [row["oq_ack_many"] for row in rows]


def nack(conn, job_id, lease_token, **kw) -> str | None:
    return scalar(conn, "oq_nack", job_id=job_id, lease_token=lease_token, **kw)


def reap(conn) -> int:
    return scalar(conn, "oq_reap")


def cancel(conn, job_id) -> bool:
    return scalar(conn, "oq_cancel", job_id=job_id)


def replay(conn, job_id) -> bool:
    return scalar(conn, "oq_replay", job_id=job_id)


def configure(conn, queue_name: str, **kw: Any) -> None:
    call(conn, "oq_configure_queue", queue_name=queue_name, **kw)


def stats(conn) -> dict[str, dict]:
    return {row["queue_name"]: row for row in call(conn, "oq_stats").fetchall()}


def purge(conn, older_than, **kw) -> int:
    return scalar(conn, "oq_purge", older_than=older_than, **kw)


# --- reading and nudging state -------------------------------------------------------


def job(conn: psycopg.Connection, job_id: int) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute("select * from openqueue.jobs where id = %s", [job_id]).fetchone()
    assert row is not None, f"job {job_id} not in openqueue.jobs"
    return row


def job_count(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from openqueue.jobs").fetchone()[0]


def db_now(conn: psycopg.Connection) -> datetime:
    """now(): inside a transaction block, the same instant the oq_* calls in it see."""
    return conn.execute("select now()").fetchone()[0]


def expire_lease(conn: psycopg.Connection, job_id: int) -> None:
    """Make a held lease expired without waiting for it."""
    conn.execute(
        "update openqueue.jobs set lease_expires_at = now() - interval '1 minute' where id = %s",
        [job_id],
    )


def make_due(conn: psycopg.Connection, job_id: int) -> None:
    """Move a waiting job's run_at into the past."""
    conn.execute("update openqueue.jobs set run_at = now() - interval '1 second' where id = %s", [job_id])


def age_finished(conn: psycopg.Connection, job_id: int, by: str) -> None:
    """Pretend a finished job finished `by` (an interval literal) ago."""
    conn.execute(
        "update openqueue.jobs set finished_at = now() - %s::interval where id = %s",
        [by, job_id],
    )


def snapshot(conn: psycopg.Connection) -> tuple[list, list]:
    """Everything a bad call must leave untouched: every job and every queue setting."""
    jobs = conn.execute("select to_jsonb(j) from openqueue.jobs as j order by j.id").fetchall()
    queues = conn.execute("select to_jsonb(q) from openqueue.queues as q order by q.queue_name").fetchall()
    return jobs, queues


def make_job(conn: psycopg.Connection, state: str, queue_name: str = "q", **kw: Any) -> tuple[int, Any]:
    """A job in `state` (any state of CONTRACT.md section 2), reached through the API.

    Returns (job id, lease token of its last lease or None). The queue must hold no
    other due job, since this leases whatever comes first.
    """
    job_id = enqueue(conn, queue_name, {"state": state}, **kw)
    if state == "pending":
        return job_id, None
    token = None
    if state != "cancelled":
        leased = lease_one(conn, queue_name)
        assert leased["id"] == job_id
        token = leased["lease_token"]
    if state == "processing":
        pass
    elif state == "failed":
        assert nack(conn, job_id, token, error="boom", retry_in=timedelta(hours=1)) == "failed"
    elif state == "completed":
        assert ack(conn, job_id, token, result={"ok": True}) is True
    elif state == "dead":
        assert nack(conn, job_id, token, error="fatal", retry=False) == "dead"
    elif state == "cancelled":
        assert cancel(conn, job_id) is True
    else:
        raise ValueError(state)
    assert job(conn, job_id)["status"] == state
    return job_id, token


# In an order that make_job can build one after another in one queue: the pending
# job comes last, and the failed one waits an hour.
ALL_STATES = ("processing", "failed", "completed", "dead", "cancelled", "pending")


def wait_until_blocked(conn: psycopg.Connection, pid: int, timeout: float = 10.0) -> None:
    """Wait until backend `pid` waits on a heavyweight lock (the point of a race test)."""
    deadline = time.monotonic() + timeout
    # On Citus the call may run on a worker node and wait there: the cluster's
    # lock waits name the coordinator session by its global pid (node id * 10^10 + pid).
    citus = conn.execute("select exists (select from pg_extension where extname = 'citus')").fetchone()[0]
    while time.monotonic() < deadline:
        row = conn.execute("select wait_event_type from pg_stat_activity where pid = %s", [pid]).fetchone()
        if row is not None and row[0] == "Lock":
            return
        if (
            citus
            and conn.execute(
                "select exists (select from citus_lock_waits where waiting_gpid %% 10000000000 = %s)", [pid]
            ).fetchone()[0]
        ):
            return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never blocked on a lock")


class Background(threading.Thread):
    """Run a callable in a thread; join() re-raises its exception and result() returns its value."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self._target_fn = target
        self._value = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._target_fn()
        except BaseException as exc:  # handed to the test thread
            self._error = exc

    def result(self, timeout: float = 30.0):
        self.join(timeout)
        assert not self.is_alive(), "background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


# --- a fresh database per test, cheaply -------------------------------------------------
#
# CREATE DATABASE costs ~0.3 s on the embedded PostgreSQL 18, which would make this
# suite take minutes. Instead each module gets one database cloned from the
# installed template, and before every test all OpenQueue tables are truncated
# (RESTART IDENTITY: job ids start again at 1), which leaves the database exactly as
# a fresh install. Should a future migration seed rows into a table, truncating
# would lose them, so then every test falls back to a database of its own.
#
# A test module opts in with:
#     module_database = helpers.module_database
#     dsn = helpers.fresh_dsn
# and the conftest fixtures built on `dsn` (conn, psql) follow.


@pytest.fixture(scope="module", name="module_database")
def module_database(pg_server, template_db) -> Iterator[tuple[str, list[str], bool]]:
    if pg_server.kind == "citus":  # the session's one database (tests/conftest.py)
        yield template_db, [], False
        return
    name = f"oq_sql_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _create_db(pg_server, name, template_db)
    with psycopg.connect(pg_server.dsn(name), autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "select format('%I.%I', schemaname, tablename) from pg_tables"
                " where schemaname = 'openqueue' and tablename <> 'schema_migrations'"
            )
        ]
        seeded = any(conn.execute(f"select exists (select from {t})").fetchone()[0] for t in tables)
    try:
        yield name, tables, seeded
    finally:
        _drop_db(pg_server, name)


@pytest.fixture(name="dsn")
def fresh_dsn(pg_server, template_db, module_database) -> Iterator[str]:
    name, tables, seeded = module_database
    if pg_server.kind == "citus":
        yield pg_server.citus_database.fresh()
        return
    if seeded:
        own = f"oq_sql_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        _create_db(pg_server, own, template_db)
        try:
            yield pg_server.dsn(own)
        finally:
            _drop_db(pg_server, own)
        return
    dsn = pg_server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # sessions a previous test leaked would hold locks and LISTENs: end them
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )
        conn.execute("set lock_timeout = '10s'")
        if tables:
            conn.execute(f"truncate {', '.join(tables)} restart identity cascade")
    yield dsn


def _create_db(server, name: str, template: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}" template "{template}"')


def _drop_db(server, name: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


# --- listening for NOTIFY on every node ---------------------------------------------------

SENTINEL = "--sentinel--"  # not a valid queue name, so never sent by OpenQueue


class NodeListener:
    """LISTENs on the database's server and, on Citus, on every worker node too (oq_nodes()).

    Contract section 10: on Citus a routed call raises NOTIFY on the worker node that ran it,
    a call inside a transaction block on the coordinator; a listener listens on all of them.
    On one PostgreSQL oq_nodes() is empty and this is one plain LISTEN session.
    """

    def __init__(self, dsn: str, *channels: str) -> None:
        self.channels = channels or ("openqueue",)
        self.conns: list[psycopg.Connection] = [psycopg.connect(dsn, autocommit=True)]
        nodes = self.conns[0].execute(
            "select node_name, node_port from openqueue.oq_nodes() where not is_coordinator"
        )
        for host, port in nodes.fetchall():
            self.conns.append(psycopg.connect(dsn, host=host, port=port, autocommit=True))
        for conn in self.conns:
            for channel in self.channels:
                conn.execute(f"listen {channel}")

    def received(self) -> list[tuple[str, str]]:
        """(channel, payload) of every notification delivered so far on any node, node by node.

        Instead of waiting to see that nothing more arrives, each node is sent a sentinel on
        its own connection: notifications are delivered in commit order, so everything that
        node sent before has arrived once its sentinel has.
        """
        got: list[tuple[str, str]] = []
        for conn in self.conns:
            conn.execute("select pg_notify('openqueue', %s)", [SENTINEL])
            for n in conn.notifies(timeout=10):
                if n.payload == SENTINEL:
                    break
                got.append((n.channel, n.payload))
            else:
                raise AssertionError(f"sentinel never arrived; got {got}")
        return got

    def notifies(self, timeout: float, stop_after: int | None = None) -> Iterator[psycopg.Notify]:
        """Notifications from any node as they arrive, until timeout seconds or stop_after of them."""
        deadline = time.monotonic() + timeout
        count = 0
        while time.monotonic() < deadline:
            for conn in self.conns:
                for n in conn.notifies(timeout=0.02):
                    yield n
                    count += 1
                    if stop_after is not None and count >= stop_after:
                        return

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


@pytest.fixture
def node_listener(dsn) -> Iterator[NodeListener]:
    """A NodeListener on channel openqueue."""
    listener = NodeListener(dsn)
    try:
        yield listener
    finally:
        listener.close()
