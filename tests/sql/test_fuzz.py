"""Every oq_* function under arbitrary input (CONTRACT section 4, issue 7).

Hypothesis draws a function from the catalog (so functions added later are
fuzzed too) and a value for each of its arguments: arbitrary NUL-free
unicode (up to 1 MB), numbers at their limits, deep and huge JSON, extreme
timestamps and intervals, NULL anywhere. Each call must succeed or fail
with SQLSTATE class 22 and a message; never XX000 or any other class (as
the superuser, not even 42501). A failed call writes nothing: a fingerprint
of every table in schema openqueue is the same before and after.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

# Every oq_* function; test_every_function_is_fuzzed fails when one is missing.
FUNCTIONS = [
    "oq_ack",
    "oq_ack_many",
    "oq_cancel",
    "oq_configure_queue",
    "oq_cron_next",
    "oq_enqueue",
    "oq_enqueue_batch",
    "oq_health",
    "oq_heartbeat",
    "oq_lease",
    "oq_limited_queues",
    "oq_nack",
    "oq_next_run_at",
    "oq_nodes",
    "oq_pause_queue",
    "oq_purge",
    "oq_purge_batch",
    "oq_queue_settings",
    "oq_reap",
    "oq_replay",
    "oq_resume_queue",
    "oq_schedule",
    "oq_schema_version",
    "oq_set_queue_limits",
    "oq_set_queue_max_payload",
    "oq_set_queue_notify",
    "oq_settled",
    "oq_stats",
    "oq_tick",
    "oq_unschedule",
    "oq_wait",
]

# Takes no argument and, without Citus, always raises 0A000 (contract section
# 10, tested in tests/sql/test_scale_out.py and tests/citus/).
NOT_FUZZED = ["oq_distribute"]

NUL_FREE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
MEGABYTE = 1024 * 1024

texts = st.one_of(
    st.sampled_from(
        [
            "q",
            "",
            " ",
            "a" * 128,
            "a" * 129,
            "ünï",
            "'; drop table x; --",
            "x" * MEGABYTE,
            "é" * (MEGABYTE // 2),
            "亜" * 3000,
        ]
    ),
    st.text(NUL_FREE, max_size=40),
)
INT4 = 2**31 - 1
INT8 = 2**63 - 1
int4s = st.one_of(
    st.sampled_from([0, 1, -1, 5, 86400, 86401, 10000, 10001, INT4, -INT4 - 1, 1073741823, 1073741824]),
    st.integers(-INT4 - 1, INT4),
)
int8s = st.one_of(st.sampled_from([0, 1, 2, 3, -1, INT8, -INT8 - 1]), st.integers(-INT8 - 1, INT8))
timestamps = st.sampled_from(
    [
        "infinity",
        "-infinity",
        "294276-12-31 23:59:59.999999+00",
        "4713-01-01 00:00:00+00 BC",
        "1970-01-01 00:00:00+00",
        "now",
        "2000-02-29 12:00:00+14",
    ]
)
intervals = st.sampled_from(
    [
        "0",
        "1 microsecond",
        "-1 second",
        "1 hour",
        "178000000 years",
        "-178000000 years",
        "2147483647 days",
        "-2147483648 months",
        "1 day 2147483647 microseconds",
    ]
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(NUL_FREE, max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(NUL_FREE, max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)


def _deep(depth: int) -> str:
    """Nested arrays and objects, as JSON text (too deep for json.dumps)."""
    opening = "".join("[" if level % 2 else '{"k": ' for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return f'{opening}"bottom"{closing}'


# JSON is sent as text and cast to jsonb by the server.
jsons = st.one_of(
    json_values.map(json.dumps),
    st.sampled_from(
        [
            "[]",
            "{}",
            "null",
            _deep(500),
            _deep(5000),
            json.dumps(["x" * 2000] * 600),
            json.dumps({"big": "y" * MEGABYTE}),
            json.dumps("z" * (MEGABYTE - 2)),  # exactly 1 MiB of JSON text: the default limit
            '"\\u0000"',
            "not json",
        ]
    ),
    st.lists(json_values, max_size=20).map(json.dumps),
)
uuids = st.one_of(st.uuids(), st.just(uuid.UUID(int=0)))

STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "text": texts,
    "integer": int4s,
    "bigint": int8s,
    "jsonb": jsons,
    "timestamp with time zone": timestamps,
    "interval": intervals,
    "boolean": st.booleans(),
    "uuid": uuids,
    "text[]": st.lists(st.one_of(st.none(), texts), max_size=4),
    "bigint[]": st.lists(st.one_of(st.none(), int8s), max_size=4),
    "uuid[]": st.lists(st.one_of(st.none(), uuids), max_size=4),
    "jsonb[]": st.lists(st.one_of(st.none(), jsons), max_size=4),
}


# Sensible values per argument name. Each example makes one or more
# arguments wild and keeps the others sensible, so that a wild value is not
# hidden behind an earlier argument's error.
SENSIBLE: dict[str, list[Any]] = {
    "queue_name": ["q", "fuzz"],
    "queue_names": [["q"], ["q", "fuzz"]],
    "worker_id": ["w", "w2"],
    "payload": ["{}", '{"a": 1}'],
    "payloads": ["[{}]", "[]"],
    "priority": [0, 5],
    "run_at": ["now", None],
    "max_attempts": [None, 3],
    "idempotency_key": [None, "k", "k2"],
    "lease_seconds": [None, 30],
    "batch_size": [1, 5],
    "job_id": [1, 2, 3, 4, 5, 6],
    "result": [None, "{}"],
    "error": ["e", None],
    "retry_in": [None, "1 second"],
    "retry": [True, False],
    "backoff_base": [None, "1 second"],
    "backoff_max": [None, "1 minute"],
    "older_than": ["1 hour", "0"],
    "include_dead": [False, True],
    "max_bytes": [None, 100],
    "mode": ["always", "when_waiting"],
    "seconds": [1, 60],
    "attempt": [1, 2],
    "max_running": [None, 2],
    "rate_limit": [None, 3],
    "rate_period": ["1 second", "1 minute"],
    "job_ids": [[1, 2]],
    "lease_tokens": [[str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]],
    "results": [None, ["{}", None]],
    # contract section 7
    "schedule_name": ["s", "s2"],
    "cron": ["* * * * *", "0 2 * * 1-5", "@daily"],
    "timezone": ["UTC", "Europe/Berlin"],
    "after": ["now", "2024-01-01 00:00+00"],
    "as_of": [None, "now"],
}


def functions(conn: psycopg.Connection) -> dict[str, list[tuple[str, str]]]:
    """Every oq_* function: name -> [(argument name, type)]."""
    rows = conn.execute(
        """
        select p.proname,
               array(select format_type(t, null) from unnest(p.proargtypes::oid[]) as t),
               coalesce(p.proargnames, '{}')
        from pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace and p.proname like 'oq\\_%'
        order by 1
        """
    ).fetchall()
    return {name: list(zip(names[: len(types)], types, strict=True)) for name, types, names in rows}


def fingerprint(conn: psycopg.Connection) -> list[tuple]:
    tables = [
        r[0]
        for r in conn.execute(
            "select oid::regclass::text from pg_class "
            "where relnamespace = 'openqueue'::regnamespace and relkind = 'r' order by 1"
        )
    ]
    return [
        (
            table,
            *conn.execute(
                f"select count(*), md5(coalesce(string_agg(t::text, '|' order by t::text), '')) "
                f"from {table} as t"
            ).fetchone(),
        )
        for table in tables
    ] + [conn.execute("select last_value, is_called from openqueue.job_id_seq").fetchone()]


def seed(conn: psycopg.Connection) -> None:
    """Jobs in several states in queues the text strategy names, so calls meet real rows."""
    conn.execute("select openqueue.oq_enqueue_batch('q', '[{}, {}, {}, {}]')")
    conn.execute("select openqueue.oq_enqueue('fuzz', '{}', idempotency_key => 'k')")
    leased = conn.execute(
        "select id, lease_token from openqueue.oq_lease('q', 'w', batch_size => 3)"
    ).fetchall()
    conn.execute("select openqueue.oq_ack(%s, %s)", leased[0])
    conn.execute("select openqueue.oq_nack(%s, %s, 'x', retry => false)", leased[1])


@pytest.fixture
def fuzz_conn(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set statement_timeout = '20s'")
        seed(conn)
        yield conn, functions(conn)


def test_every_function_is_fuzzed(conn):
    assert sorted(functions(conn)) == sorted(FUNCTIONS + NOT_FUZZED)


@pytest.mark.parametrize("name", FUNCTIONS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
)
@given(data=st.data())
def test_every_function_answers_any_input_with_success_or_a_class_22_error(fuzz_conn, name, data):
    conn, catalog = fuzz_conn
    arguments = catalog[name]
    values = {}
    wild = (
        data.draw(st.sets(st.sampled_from([a for a, _ in arguments]), min_size=1), label="wild")
        if arguments
        else set()
    )
    for argument, type_name in arguments:
        assert type_name in STRATEGIES, f"no strategy for {name}({argument} {type_name}): add one"
        if argument in wild or argument not in SENSIBLE:
            values[argument] = data.draw(st.one_of(st.none(), STRATEGIES[type_name]), label=argument)
        else:
            values[argument] = data.draw(st.sampled_from(SENSIBLE[argument]), label=argument)
    sql = (
        f"select * from openqueue.{name}("
        + ", ".join(f"{argument} => %({argument})s::{type_name}" for argument, type_name in arguments)
        + ")"
    )

    before = fingerprint(conn)
    try:
        with conn.transaction():
            conn.execute(sql, values).fetchall()
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        message = exc.diag.message_primary or ""
        assert state.startswith("22"), f"{name}: SQLSTATE {state}: {message[:300]}"
        assert message.strip(), f"{name}: SQLSTATE {state} without a message"
        assert fingerprint(conn) == before, f"{name} wrote something and then failed with {state}"


# Inputs found or feared by hand: each must end in success or class 22, writing nothing on error.
EXTREMES = [
    ("oq_enqueue", {"queue_name": "q", "payload": "{}", "idempotency_key": "k" * MEGABYTE}),
    ("oq_enqueue", {"queue_name": "q", "payload": "{}", "idempotency_key": "k" * 256}),
    ("oq_enqueue", {"queue_name": "q", "payload": _deep(5000)}),
    ("oq_enqueue", {"queue_name": "q", "payload": json.dumps("z" * MEGABYTE)}),
    ("oq_enqueue", {"queue_name": "q", "payload": "{}", "run_at": "294276-12-31 23:59:59.999999+00"}),
    ("oq_enqueue", {"queue_name": "q", "payload": "{}", "run_at": "-infinity", "priority": -(2**31)}),
    ("oq_enqueue_batch", {"queue_name": "q", "payloads": json.dumps([{}, "y" * MEGABYTE])}),
    (
        "oq_lease",
        {"queue_name": "q", "worker_id": "w" * MEGABYTE, "lease_seconds": 86400, "batch_size": 10000},
    ),
    ("oq_nack", {"job_id": 3, "lease_token": str(uuid.uuid4()), "retry_in": "178000000 years"}),
    (
        "oq_configure_queue",
        {"queue_name": "q", "backoff_base": "178000000 years", "backoff_max": "-1 second"},
    ),
    ("oq_purge", {"older_than": "178000000 years", "include_dead": True}),
    ("oq_purge_batch", {"older_than": "0", "include_dead": True, "batch_size": 2**31 - 1}),
    ("oq_next_run_at", {"queue_names": ["q", None, "x" * MEGABYTE]}),
    ("oq_limited_queues", {"queue_names": ["q", None, "x" * MEGABYTE]}),
    ("oq_set_queue_max_payload", {"queue_name": "q", "max_bytes": 0}),
    ("oq_set_queue_limits", {"queue_name": "q", "rate_limit": 2**31 - 1, "rate_period": "178000000 years"}),
    ("oq_set_queue_limits", {"queue_name": "q", "rate_limit": 1, "rate_period": "infinity"}),
    ("oq_set_queue_limits", {"queue_name": "q", "rate_limit": 1, "rate_period": "0.000001 seconds"}),
]


@pytest.mark.parametrize(("name", "values"), EXTREMES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(EXTREMES)])
def test_extreme_inputs(fuzz_conn, name, values):
    conn, catalog = fuzz_conn
    types = dict(catalog[name])
    values = {k: v for k, v in values.items() if k in types}
    sql = f"select * from openqueue.{name}(" + ", ".join(f"{k} => %({k})s::{types[k]}" for k in values) + ")"
    before = fingerprint(conn)
    try:
        with conn.transaction():
            conn.execute(sql, values).fetchall()
    except psycopg.Error as exc:
        assert (exc.sqlstate or "").startswith("22"), f"{name}: {exc.sqlstate}: {exc.diag.message_primary}"
        assert fingerprint(conn) == before
