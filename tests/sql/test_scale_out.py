"""Contract section 10 on a single PostgreSQL: the queue_name argument of
oq_heartbeat, oq_ack, oq_nack and oq_ack_many, oq_distribute without Citus,
oq_nodes. The routing itself is tested on a Citus cluster in tests/citus/."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest

import openqueue_py


def _lease(conn: psycopg.Connection, queue: str = "q") -> tuple[int, str]:
    conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,))
    row = conn.execute("select id, lease_token from openqueue.oq_lease(%s, 'w')", (queue,)).fetchone()
    assert row is not None
    return row[0], row[1]


def _status(conn: psycopg.Connection, job_id: int) -> str:
    return conn.execute("select status from openqueue.jobs where id = %s", (job_id,)).fetchone()[0]


def test_heartbeat_with_another_queue_name_acts_as_a_wrong_token_and_with_its_own_extends(conn):
    job_id, token = _lease(conn)
    before = conn.execute("select lease_expires_at from openqueue.jobs where id = %s", (job_id,)).fetchone()[
        0
    ]
    wrong = conn.execute(
        "select openqueue.oq_heartbeat(%s, %s, lease_seconds => 600, queue_name => 'other')", (job_id, token)
    ).fetchone()[0]
    assert wrong is None
    assert (
        conn.execute("select lease_expires_at from openqueue.jobs where id = %s", (job_id,)).fetchone()[0]
        == before
    )
    right = conn.execute(
        "select openqueue.oq_heartbeat(%s, %s, lease_seconds => 600, queue_name => 'q')", (job_id, token)
    ).fetchone()[0]
    assert right is not None and right > before


def test_ack_with_another_queue_name_returns_false_and_changes_nothing(conn):
    job_id, token = _lease(conn)
    assert (
        conn.execute("select openqueue.oq_ack(%s, %s, queue_name => 'other')", (job_id, token)).fetchone()[0]
        is False
    )
    assert _status(conn, job_id) == "processing"
    assert (
        conn.execute("select openqueue.oq_ack(%s, %s, queue_name => 'q')", (job_id, token)).fetchone()[0]
        is True
    )
    assert _status(conn, job_id) == "completed"


def test_nack_with_another_queue_name_returns_null_and_changes_nothing(conn):
    job_id, token = _lease(conn)
    wrong = conn.execute(
        "select openqueue.oq_nack(%s, %s, 'e', queue_name => 'other')", (job_id, token)
    ).fetchone()
    assert wrong[0] is None
    assert _status(conn, job_id) == "processing"
    right = conn.execute(
        "select openqueue.oq_nack(%s, %s, 'e', queue_name => 'q')", (job_id, token)
    ).fetchone()
    assert right[0] == "failed"


def test_ack_many_with_another_queue_name_completes_nothing(conn):
    first = _lease(conn)
    second = _lease(conn)
    ids, tokens = [first[0], second[0]], [first[1], second[1]]
    wrong = conn.execute("select * from openqueue.oq_ack_many(%s, %s, queue_name => 'other')", (ids, tokens))
    assert wrong.fetchall() == []
    assert [_status(conn, i) for i in ids] == ["processing", "processing"]
    right = conn.execute("select * from openqueue.oq_ack_many(%s, %s, queue_name => 'q')", (ids, tokens))
    assert [r[0] for r in right.fetchall()] == ids


def test_the_old_signatures_are_gone_and_positional_calls_still_work(conn):
    for old in (
        "oq_heartbeat(bigint, uuid, integer)",
        "oq_ack(bigint, uuid, jsonb)",
        "oq_nack(bigint, uuid, text, interval, boolean)",
        "oq_ack_many(bigint[], uuid[], jsonb[])",
    ):
        assert conn.execute("select to_regprocedure(%s)", (f"openqueue.{old}",)).fetchone()[0] is None
    job_id, token = _lease(conn)
    assert (
        conn.execute("select openqueue.oq_ack(%s, %s, '{\"r\": 1}')", (job_id, token)).fetchone()[0] is True
    )


@pytest.fixture
def conn_without_citus(pg_server, conn) -> Iterator[psycopg.Connection]:
    """A connection to a database with OpenQueue installed and no citus extension.

    The test database itself, except on the Citus backend: there a plain database on the
    coordinator's server (no citus extension in it), OpenQueue installed.
    """
    if pg_server.kind != "citus":
        yield conn
        return
    name = f"oq_plain_{os.getpid()}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    try:
        openqueue_py.install(pg_server.dsn(name))
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as plain:
            assert plain.execute("select count(*) from pg_extension where extname = 'citus'").fetchone() == (
                0,
            )
            yield plain
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def test_distribute_without_citus_raises_0A000_saying_so(conn_without_citus):
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="citus"):
        conn_without_citus.execute("select openqueue.oq_distribute()")


def test_nodes_is_empty_without_citus(conn_without_citus):
    assert conn_without_citus.execute("select * from openqueue.oq_nodes()").fetchall() == []


def test_nodes_lists_the_coordinator_and_each_worker_node_on_citus(pg_server, conn):
    if pg_server.kind != "citus":
        assert conn.execute("select * from openqueue.oq_nodes()").fetchall() == []
        return
    cluster = pg_server.cluster
    expected = [("127.0.0.1", node.port, node is cluster.coordinator) for node in cluster.nodes]
    assert sorted(conn.execute("select * from openqueue.oq_nodes()").fetchall()) == sorted(expected)
