"""The per-queue maximum payload size: 1 MiB of JSON text by default, set per
queue by oq_set_queue_max_payload, enforced by oq_enqueue and, element by
element, by oq_enqueue_batch (22023 naming payload / payloads)."""

from __future__ import annotations

import json

import psycopg
import pytest

from openqueue_py import Client

MIB = 1024 * 1024


def enqueue(conn: psycopg.Connection, queue: str, payload_json: str) -> int:
    return conn.execute("select openqueue.oq_enqueue(%s, %s::jsonb)", (queue, payload_json)).fetchone()[0]


def string_payload(size: int) -> str:
    """A JSON string whose text is exactly `size` bytes."""
    return json.dumps("x" * (size - 2))


def jobs(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from openqueue.jobs").fetchone()[0]


def test_the_default_limit_is_one_mebibyte_inclusive(conn):
    assert enqueue(conn, "q", string_payload(MIB)) > 0
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        enqueue(conn, "q", string_payload(MIB + 1))
    message = info.value.diag.message_primary
    assert message.startswith("payload is 1048577 bytes") and "1048576" in message
    assert jobs(conn) == 1


def test_a_batch_is_checked_element_by_element_and_writes_nothing_when_one_is_too_big(conn):
    payloads = json.dumps(["small", "x" * (MIB - 2), "x" * (MIB - 1)])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
        conn.execute("select openqueue.oq_enqueue_batch('q', %s::jsonb)", (payloads,))
    assert info.value.diag.message_primary.startswith("payloads element 2 (counting from 0) is 1048577 bytes")
    assert jobs(conn) == 0
    # Many elements below the limit are fine, even if together they are larger.
    big = json.dumps(["x" * (MIB - 2)] * 2)
    assert len(conn.execute("select openqueue.oq_enqueue_batch('q', %s::jsonb)", (big,)).fetchall()) == 2


def test_the_limit_is_per_queue_and_null_restores_the_default(conn):
    conn.execute("select openqueue.oq_set_queue_max_payload('tiny', 10)")
    assert enqueue(conn, "tiny", '"12345678"') > 0  # 10 bytes
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        enqueue(conn, "tiny", '"123456789"')
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("""select openqueue.oq_enqueue_batch('tiny', '["a", "123456789"]')""")
    assert enqueue(conn, "other", '"123456789"') > 0
    conn.execute("select openqueue.oq_set_queue_max_payload('tiny', max_bytes => null)")
    assert enqueue(conn, "tiny", '"123456789"') > 0
    # A queue with a limit is a configured queue: oq_stats lists it.
    conn.execute("select openqueue.oq_set_queue_max_payload('limited_only', 100)")
    assert "limited_only" in {r[0] for r in conn.execute("select queue_name from openqueue.oq_stats()")}


@pytest.mark.parametrize(
    ("queue", "max_bytes", "sqlstate", "named"),
    [
        ("q", 0, "22023", "max_bytes"),
        ("q", -5, "22023", "max_bytes"),
        ("q", 1073741824, "22023", "max_bytes"),
        (None, 10, "22004", "queue_name"),
        ("bad name", 10, "22023", "queue_name"),
    ],
)
def test_bad_limits_are_refused(conn, queue, max_bytes, sqlstate, named):
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select openqueue.oq_set_queue_max_payload(%s, %s)", (queue, max_bytes))
    assert info.value.sqlstate == sqlstate and named in info.value.diag.message_primary
    assert conn.execute("select count(*) from openqueue.queue_limits").fetchone() == (0,)


def test_limits_accepted_at_both_ends(conn):
    conn.execute("select openqueue.oq_set_queue_max_payload('q', 1)")
    conn.execute("select openqueue.oq_set_queue_max_payload('q', 1073741823)")
    assert conn.execute("select max_payload_bytes from openqueue.queue_limits").fetchone() == (1073741823,)


def test_the_clients_pass_the_limit_and_the_error_through(dsn):
    with Client(dsn) as client:
        client.set_queue_max_payload("c", 20)
        client.enqueue("c", {"a": 1})
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            client.enqueue("c", {"a": "x" * 30})
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            client.enqueue_batch("c", [{"a": 1}, {"a": "x" * 30}])
        client.set_queue_max_payload("c")
        client.enqueue("c", {"a": "x" * 30})
