"""CONTRACT section 6: objects planted in public or earlier in the caller's
search_path change nothing in any function's behaviour.

One scenario calls every oq_* function inside one transaction (so now() is
one instant and every timestamp can be kept as an offset from it). It runs in
a clean database and in one where functions, operators and tables that shadow
built-ins and OpenQueue's own names are planted in public, in a schema put
first in the caller's search_path (with pg_catalog after it) and as temporary
tables; the two transcripts must be identical.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

PLANTED_UUID = "00000000-0000-0000-0000-00000000beef"

# Every one of these would change a result if a function resolved it from the caller's path.
PLANT = f"""
create function {{schema}}.now() returns timestamptz language sql as $$ select '2000-01-01'::timestamptz $$;
create function {{schema}}.gen_random_uuid() returns uuid language sql as $$ select '{PLANTED_UUID}'::uuid $$;
create function {{schema}}.random() returns double precision language sql as $$ select 0.0::float8 $$;
create function {{schema}}.nextval(regclass) returns bigint language sql as $$ select 1::bigint $$;
create function {{schema}}.pg_notify(text, text) returns void language sql as $$ select $$;
create function {{schema}}.octet_length(text) returns integer language sql as $$ select 0 $$;
create function {{schema}}.length(text) returns integer language sql as $$ select 1 $$;
create function {{schema}}.jsonb_typeof(jsonb) returns text language sql as $$ select 'array'::text $$;
create function {{schema}}.jsonb_build_object(variadic text[]) returns jsonb
    language sql as $$ select '{{{{"planted": true}}}}'::jsonb $$;
create function {{schema}}.format(text, variadic text[]) returns text language sql as $$ select 'planted' $$;
create function {{schema}}.make_interval(secs double precision) returns interval
    language sql as $$ select interval '1 year' $$;
create function {{schema}}.always_true(uuid, uuid) returns boolean language sql as $$ select true $$;
create operator {{schema}}.= (leftarg = uuid, rightarg = uuid, function = {{schema}}.always_true);
create function {{schema}}.bigint_true(bigint, bigint) returns boolean language sql as $$ select true $$;
create operator {{schema}}.= (leftarg = bigint, rightarg = bigint, function = {{schema}}.bigint_true);
create function {{schema}}.text_true(text, text) returns boolean language sql as $$ select true $$;
create operator {{schema}}.= (leftarg = text, rightarg = text, function = {{schema}}.text_true);
create operator {{schema}}.<> (leftarg = text, rightarg = text, function = {{schema}}.text_true);
create function {{schema}}.ts_true(timestamptz, timestamptz) returns boolean
    language sql as $$ select true $$;
create operator {{schema}}.<= (leftarg = timestamptz, rightarg = timestamptz, function = {{schema}}.ts_true);
create operator {{schema}}.< (leftarg = timestamptz, rightarg = timestamptz, function = {{schema}}.ts_true);
create function {{schema}}.jsonb_left(jsonb, jsonb) returns jsonb language sql as $$ select $1 $$;
create operator {{schema}}.|| (leftarg = jsonb, rightarg = jsonb, function = {{schema}}.jsonb_left);
create table {{schema}}.live_jobs (like openqueue.live_jobs);
create table {{schema}}.finished_jobs (like openqueue.finished_jobs);
create table {{schema}}.jobs (like openqueue.live_jobs);
create table {{schema}}.queues (like openqueue.queues);
create table {{schema}}.idempotency_keys (like openqueue.idempotency_keys);
create table {{schema}}.schema_migrations (like openqueue.schema_migrations);
create sequence {{schema}}.job_id_seq start 1000;
"""

TEMP_TABLES = """
create temp table live_jobs (like openqueue.live_jobs);
create temp table finished_jobs (like openqueue.finished_jobs);
create temp table jobs (like openqueue.live_jobs);
create temp table queues (like openqueue.queues);
create temp table idempotency_keys (like openqueue.idempotency_keys);
"""


def token(job_id: int) -> str:
    """SQL for the current lease token of a job (the owner may read it)."""
    return f"(select lease_token from openqueue.jobs where id operator(pg_catalog.=) {job_id})"


# The scenario: (label, SQL). Each runs in a savepoint; its rows or its error are recorded.
SCENARIO: list[tuple[str, str]] = [
    (
        "configure",
        "select openqueue.oq_configure_queue('s', max_attempts => 2, lease_seconds => 40, "
        "backoff_base => interval '2 seconds', backoff_max => interval '10 seconds')",
    ),
    ("max payload", "select openqueue.oq_set_queue_max_payload('s', 40)"),
    ("pause", "select openqueue.oq_pause_queue('s')"),
    ("resume", "select openqueue.oq_resume_queue('s')"),
    ("limits", "select openqueue.oq_set_queue_limits('s', max_running => 100, rate_limit => 1000)"),
    ("limited", "select openqueue.oq_limited_queues(array['s', 'other'])"),
    ("notify mode", "select openqueue.oq_set_queue_notify('s', 'when_waiting')"),
    ("settings", "select * from openqueue.oq_queue_settings()"),
    ("wait", "select openqueue.oq_wait(array['s'], 'w1', 30)"),
    ("enqueue", "select openqueue.oq_enqueue('s', '{\"a\": 1}')"),
    ("enqueue key", "select openqueue.oq_enqueue('s', '{\"k\": 1}', idempotency_key => 'k')"),
    ("enqueue key again", "select openqueue.oq_enqueue('s', '{\"k\": 2}', idempotency_key => 'k')"),
    ("enqueue other key", "select openqueue.oq_enqueue('s', '{\"k\": 3}', idempotency_key => 'k2')"),
    (
        "enqueue later",
        "select openqueue.oq_enqueue('s', '{}', run_at => pg_catalog.now() + interval '1 hour')",
    ),
    (
        "enqueue too big",
        "select openqueue.oq_enqueue('s', pg_catalog.jsonb_build_object('x', pg_catalog.repeat('y', 50)))",
    ),
    ("enqueue bad name", "select openqueue.oq_enqueue('bad name', '{}')"),
    ("batch", "select * from openqueue.oq_enqueue_batch('s', '[{}, {\"b\": 2}]', priority => 5)"),
    (
        "batch too big",
        "select * from openqueue.oq_enqueue_batch('s', "
        "pg_catalog.jsonb_build_array('{}'::jsonb, pg_catalog.repeat('z', 60)))",
    ),
    ("batch not array", "select * from openqueue.oq_enqueue_batch('s', '{}')"),
    ("lease", "select * from openqueue.oq_lease('s', 'w1', batch_size => 10)"),
    ("lease none", "select * from openqueue.oq_lease('s', 'w1')"),
    ("unlimit", "select openqueue.oq_set_queue_limits('s')"),
    ("unlimited", "select openqueue.oq_limited_queues(array['s', 'other'])"),
    (
        "heartbeat",
        f"select openqueue.oq_heartbeat(1, {token(1)}, 60)",
    ),
    ("heartbeat planted token", f"select openqueue.oq_heartbeat(1, '{PLANTED_UUID}')"),
    ("ack planted token", f"select openqueue.oq_ack(1, '{PLANTED_UUID}', '{{}}')"),
    ("nack planted token", f"select openqueue.oq_nack(1, '{PLANTED_UUID}', 'x')"),
    (
        "ack",
        f"select openqueue.oq_ack(1, {token(1)}, '{{\"r\": 1}}')",
    ),
    ("ack finished (token now NULL)", f"select openqueue.oq_ack(1, {token(1)})"),
    (
        "ack many",
        "select * from openqueue.oq_ack_many(array[2, 3, 4]::bigint[], "
        f"array[{token(2)}, '{PLANTED_UUID}', {token(4)}])",
    ),
    ("nack", f"select openqueue.oq_nack(6, {token(6)}, 'boom')"),
    (
        "settled",
        "select openqueue.oq_settled(2, 'w1', 1), openqueue.oq_settled(6, 'w1', 1), "
        "openqueue.oq_settled(6, 'w2', 1), openqueue.oq_settled(2, 'w1', 2)",
    ),
    (
        "expire",
        "update openqueue.jobs set lease_expires_at = pg_catalog.now() - interval '1 minute' "
        "where id operator(pg_catalog.=) 7",
    ),
    ("reap", "select openqueue.oq_reap()"),
    ("forbidden update", "update openqueue.jobs set queue_name = 'other' where id operator(pg_catalog.=) 7"),
    ("cancel", "select openqueue.oq_cancel(7)"),
    ("cancel again", "select openqueue.oq_cancel(7)"),
    ("replay", "select openqueue.oq_replay(7)"),
    ("next run at", "select openqueue.oq_next_run_at(array['s'])"),
    ("schema version", "select openqueue.oq_schema_version() >= 3"),
    ("nodes", "select count(*) from openqueue.oq_nodes()"),
    ("distribute", "select openqueue.oq_distribute()"),
    ("stats", "select * from openqueue.oq_stats()"),
    ("health", "select count(distinct check_name) > 0 from openqueue.oq_health()"),
    (
        "age",
        "update openqueue.jobs set finished_at = pg_catalog.now() - interval '2 hours' "
        "where id operator(pg_catalog.<) 3",
    ),
    ("purge", "select openqueue.oq_purge(interval '1 hour')"),
    ("purge batch", "select openqueue.oq_purge_batch(interval '0 seconds', true, 10)"),
    ("key freed", "select openqueue.oq_enqueue('s', '{\"k\": 4}', idempotency_key => 'k')"),
    (
        "jobs",
        "select id, queue_name, payload, status, priority, run_at, attempts, max_attempts, leased_by, "
        "lease_token is not null, lease_expires_at, result, errors, idempotency_key, created_at, finished_at "
        "from openqueue.jobs order by id",
    ),
    (
        "queues",
        # the join's = spelled out, as a careful caller would: on Citus a planted = in the join
        # would make it a join not on the distribution column, which Citus refuses
        "select q.queue_name, q.max_attempts, q.lease_seconds, q.backoff_base, q.backoff_max, "
        "ql.max_payload_bytes from openqueue.queues as q left join openqueue.queue_limits as ql "
        "on q.queue_name operator(pg_catalog.=) ql.queue_name order by 1",
    ),
    ("keys", "select queue_name, idempotency_key, job_id from openqueue.idempotency_keys order by 1, 2"),
    # Contract section 7, after the listings above: slots are absolute times
    # (aligned to the clock, not to now()), shown as text.
    (
        "schedule",
        "select openqueue.oq_schedule('sch', '*/5 * * * 1-5', 'sq', '{\"s\": 1}', 3, 2, 'Europe/Berlin')",
    ),
    ("schedule bad cron", "select openqueue.oq_schedule('sch2', '61 * * * *', 'sq')"),
    ("schedule bad timezone", "select openqueue.oq_schedule('sch2', '* * * * *', 'sq', timezone => 'XYZ5')"),
    ("schedule bad name", "select openqueue.oq_schedule('bad name', '* * * * *', 'sq')"),
    (
        "cron next",
        "select openqueue.oq_cron_next('30 2 * * *', '2024-10-26 12:00+00', 'Europe/Berlin')::text, "
        "openqueue.oq_cron_next('30 2 * * *', '2024-03-30 12:00+00', 'Europe/Berlin')::text, "
        "openqueue.oq_cron_next('0 0 13 * 5', '2024-09-01 00:00+00')::text",
    ),
    ("tick", "select openqueue.oq_tick('2100-01-01 00:00+00')"),
    ("tick again", "select openqueue.oq_tick('2100-01-01 00:00+00')"),
    (
        "schedules",
        "select schedule_name, cron, queue_name, payload, priority, max_attempts, timezone, "
        "next_run_at::text, last_run_at::text from openqueue.schedules",
    ),
    (
        "schedule jobs",
        "select queue_name, payload, priority, max_attempts, run_at::text, idempotency_key, status "
        "from openqueue.jobs where queue_name operator(pg_catalog.=) 'sq'",
    ),
    ("unschedule", "select openqueue.oq_unschedule('sch')"),
    ("unschedule unknown", "select openqueue.oq_unschedule('sch')"),
]

_counter = iter(range(10**6))


@pytest.fixture
def two_databases(pg_server, template_db) -> Iterator[tuple[str, str]]:
    names = [f"oq_shadow_{os.getpid()}_{next(_counter)}_{kind}" for kind in ("clean", "planted")]
    if pg_server.kind == "citus":  # not clonable: each built on every node, installed, distributed
        try:
            yield pg_server.citus_installed_database(names[0]), pg_server.citus_installed_database(names[1])
        finally:
            for name in names:
                pg_server.cluster.drop_database(name)
        return
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(f'create database "{name}" template "{template_db}"')
    try:
        yield pg_server.dsn(names[0]), pg_server.dsn(names[1])
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            for name in names:
                admin.execute(f'drop database if exists "{name}" with (force)')


def _normalise(value: Any, now: datetime) -> Any:
    if isinstance(value, datetime):
        return ("now +", round((value - now).total_seconds()))
    if isinstance(value, uuid.UUID):
        return "planted uuid" if str(value) == PLANTED_UUID else "a uuid"
    if isinstance(value, list):
        return [_normalise(v, now) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v, now) for k, v in value.items()}
    if isinstance(value, str) and len(value) > 20 and value[:4].isdigit() and "T" in value:
        return ("now +", round((datetime.fromisoformat(value) - now).total_seconds()))
    return value


def run_scenario(conn: psycopg.Connection) -> list[tuple[str, Any]]:
    transcript: list[tuple[str, Any]] = []
    with conn.transaction():
        now = conn.execute("select pg_catalog.now()").fetchone()[0]
        for label, sql in SCENARIO:
            try:
                with conn.transaction():
                    cur = conn.execute(sql)
                    rows = cur.fetchall() if cur.description else cur.rowcount
            except psycopg.Error as exc:
                rows = ("error", exc.sqlstate, exc.diag.message_primary)
            transcript.append(
                (label, _normalise(rows if not isinstance(rows, list) else [list(r) for r in rows], now))
            )
    return transcript


def test_the_scenario_calls_every_oq_function(conn):
    names = {
        n
        for (n,) in conn.execute(
            "select proname from pg_proc "
            "where pronamespace = 'openqueue'::regnamespace and proname like 'oq\\_%'"
        )
    }
    called = {n for n in names if any(f"openqueue.{n}(" in sql for _, sql in SCENARIO)}
    assert called == names, f"add these to SCENARIO: {sorted(names - called)}"


def test_planted_functions_operators_and_tables_change_no_result(two_databases):
    clean_dsn, planted_dsn = two_databases
    with psycopg.connect(clean_dsn) as clean:
        expected = run_scenario(clean)

    with psycopg.connect(planted_dsn, autocommit=True) as setup:
        setup.execute("create schema evil")
        for schema in ("public", "evil"):
            setup.execute(PLANT.format(schema=schema))
        setup.execute("grant usage on schema evil to public")
    with psycopg.connect(planted_dsn) as planted:
        planted.execute(TEMP_TABLES)
        planted.execute("set search_path = evil, public, pg_catalog, pg_temp")
        planted.commit()
        # The plants are live for the caller's own queries...
        assert planted.execute("select now() = '2000-01-01'::timestamptz").fetchone() == (True,)
        assert planted.execute(f"select gen_random_uuid() = '{PLANTED_UUID}'").fetchone() == (True,)
        planted.commit()
        got = run_scenario(planted)

    assert dict(got) == dict(expected)
    assert got == expected
    labels = dict(expected)
    # ... and the transcript is the contract's meaning, not just equal.
    assert labels["enqueue key again"] == labels["enqueue key"]
    assert labels["enqueue too big"][:2] == ("error", "22023")
    assert labels["heartbeat planted token"] == [[None]]
    assert labels["ack planted token"] == [[False]]
    assert labels["ack"] == [[True]]
    assert labels["ack finished (token now NULL)"][:2] == ("error", "22004")
    assert labels["ack many"] == [[2], [4]]
    assert labels["reap"] == [[1]]
    assert labels["purge"] == [[2]]
    assert labels["forbidden update"][:2] == ("error", "22023")
    with psycopg.connect(planted_dsn, autocommit=True) as check:
        for schema in ("public", "evil"):
            for table in ("live_jobs", "finished_jobs", "jobs", "queues", "idempotency_keys"):
                assert check.execute(f"select count(*) from {schema}.{table}").fetchone() == (0,), table


def test_jsonb_args_sent_as_parameters_are_unaffected_too(two_databases):
    """The Python client's calls (named arguments, typed parameters) under a planted path."""
    _, planted_dsn = two_databases
    with psycopg.connect(planted_dsn, autocommit=True) as setup:
        setup.execute(PLANT.format(schema="public"))
    with psycopg.connect(planted_dsn, autocommit=True, options="-c search_path=public,pg_catalog") as conn:
        from openqueue_py import Client

        with Client(conn) as client:
            job_id = client.enqueue("p", {"n": 1})
            leased = client.lease("p", "w")
            assert leased is not None and leased.job.id == job_id
            assert str(leased.lease_token) != PLANTED_UUID
            assert client.ack(job_id, uuid.UUID(PLANTED_UUID)) is False
            assert client.ack(job_id, leased.lease_token, result={"ok": True}) is True
        row = conn.execute("select status, result from openqueue.jobs where id = %s", (job_id,)).fetchone()
        assert row == ("completed", {"ok": True})
