"""openqueue.jobs (CONTRACT section 3): UPDATE may change only run_at, priority,
attempts, lease_expires_at and finished_at; any other column raises 22023
naming it and changes nothing. INSERT is refused."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

ALLOWED = {"run_at", "priority", "attempts", "lease_expires_at", "finished_at"}

# A value different from whatever the job holds, per forbidden column.
NEW_VALUES = {
    "id": "id + 1000",
    "queue_name": "'other'",
    "payload": """'{"changed": true}'::jsonb""",
    "status": "case when status = 'pending' then 'failed' else 'pending' end",
    "max_attempts": "max_attempts + 7",
    "leased_by": "'thief'",
    "lease_token": "gen_random_uuid()",
    "result": """'{"forged": true}'::jsonb""",
    "errors": """'[{"attempt": 9, "error": "x", "at": "2000-01-01"}]'::jsonb""",
    "idempotency_key": "'another-key'",
    "created_at": "created_at - interval '1 day'",
}


def snapshot(conn: psycopg.Connection) -> list:
    return [
        conn.execute("select to_jsonb(j) from openqueue.jobs as j order by id").fetchall(),
        conn.execute("select * from openqueue.idempotency_keys order by 1, 2").fetchall(),
    ]


@pytest.fixture
def jobs(conn) -> dict[str, int]:
    """A processing job (with a key) and a completed one."""
    done = conn.execute("select openqueue.oq_enqueue('v', '{}', idempotency_key => 'a')").fetchone()[0]
    token = conn.execute("select lease_token from openqueue.oq_lease('v', 'w')").fetchone()[0]
    conn.execute("select openqueue.oq_ack(%s, %s, '{\"r\": 1}')", (done, token))
    running = conn.execute("select openqueue.oq_enqueue('v', '{}', idempotency_key => 'b')").fetchone()[0]
    conn.execute("select openqueue.oq_lease('v', 'w')")
    return {"processing": running, "completed": done}


def test_the_rule_covers_every_column_of_the_view(conn):
    columns = {
        r[0]
        for r in conn.execute(
            "select attname from pg_attribute where attrelid = 'openqueue.jobs'::regclass and attnum > 0"
        )
    }
    assert columns == ALLOWED | set(NEW_VALUES)


@pytest.mark.parametrize("column", sorted(NEW_VALUES))
@pytest.mark.parametrize("state", ["processing", "completed"])
def test_changing_any_other_column_raises_22023_naming_it_and_changes_nothing(conn, jobs, column, state):
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            f"update openqueue.jobs set priority = priority + 1, {column} = {NEW_VALUES[column]}"
            " where id = %s",
            (jobs[state],),
        )
    assert info.value.sqlstate == "22023"
    assert f"column {column} cannot be changed" in info.value.diag.message_primary
    assert snapshot(conn) == before


def test_the_allowed_columns_change_and_an_unchanged_forbidden_column_is_fine(conn, jobs):
    running, done = jobs["processing"], jobs["completed"]
    conn.execute(
        "update openqueue.jobs set run_at = now() - interval '1 hour', priority = 4, attempts = 3,"
        " lease_expires_at = now() + interval '1 hour', queue_name = queue_name, status = status"
        " where id = %s",
        (running,),
    )
    conn.execute(
        "update openqueue.jobs set priority = 2, attempts = 1, finished_at = now() - interval '1 day'"
        " where id = %s",
        (done,),
    )
    rows = conn.execute(
        "select id, priority, attempts, run_at < now(), lease_expires_at > now() + interval '59 minutes',"
        " finished_at < now() - interval '23 hours' from openqueue.jobs order by id"
    ).fetchall()
    assert rows == [(done, 2, 1, True, None, True), (running, 4, 3, True, True, None)]


@pytest.mark.parametrize(
    ("assignment", "state", "sqlstate", "names"),
    [
        ("priority = null", "processing", "22004", "priority"),
        ("run_at = null", "completed", "22004", "run_at"),
        ("attempts = -1", "processing", "22023", "attempts"),
        ("lease_expires_at = null", "processing", "22004", "lease_expires_at"),
        ("finished_at = null", "completed", "22004", "finished_at"),
    ],
)
def test_bad_values_of_allowed_columns_are_refused(conn, jobs, assignment, state, sqlstate, names):
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(f"update openqueue.jobs set {assignment} where id = %s", (jobs[state],))
    assert info.value.sqlstate == sqlstate
    assert names in info.value.diag.message_primary
    assert snapshot(conn) == before


def test_insert_through_the_view_is_refused(conn):
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("insert into openqueue.jobs (queue_name, payload) values ('v', %s)", (Jsonb({}),))
    assert conn.execute("select count(*) from openqueue.jobs").fetchone() == (0,)
