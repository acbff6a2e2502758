"""CONTRACT section 6: the three roles, what each may execute, and 42501 for the rest.

Every check runs as a real LOGIN role that holds exactly one OpenQueue role
(see conftest.py), never as the superuser.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from openqueue_py import Client, Worker

from . import test_install_roles

PRODUCER = {"oq_enqueue", "oq_enqueue_batch", "oq_stats"}
WORKER = {
    "oq_lease",
    "oq_heartbeat",
    "oq_ack",
    "oq_ack_many",
    "oq_nack",
    "oq_reap",
    "oq_stats",
    # what the worker runtime calls besides (openqueue_py/worker.py)
    "oq_next_run_at",
    "oq_wait",
    "oq_schema_version",
    "oq_settled",
    # contract section 10: the worker finds the Citus nodes to LISTEN on
    "oq_nodes",
    # schema version 8: which queues have flow-control limits (the retry ladder)
    "oq_limited_queues",
    # contract section 7: workers fire schedules
    "oq_tick",
    "oq_cron_next",
}


def expire_lease(conn: psycopg.Connection, job_id: int) -> None:
    """As the owner: make a held lease expired without waiting for it."""
    conn.execute(
        "update openqueue.jobs set lease_expires_at = now() - interval '1 minute' where id = %s", (job_id,)
    )


def ack_many(conn: psycopg.Connection, job_ids: list[int], tokens: list[uuid.UUID]) -> list[int]:
    rows = conn.execute(
        "select * from openqueue.oq_ack_many(job_ids => %s::bigint[], lease_tokens => %s::uuid[])",
        (job_ids, tokens),
    ).fetchall()
    return [row[0] for row in rows]


def oq_functions(conn: psycopg.Connection) -> list[tuple[str, str, list[str]]]:
    """Every openqueue function: (name, regprocedure, input argument types)."""
    rows = conn.execute(
        """
        select p.proname, p.oid::regprocedure::text,
               array(select format_type(t, null) from unnest(p.proargtypes::oid[]) as t)
        from pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace
        order by 1, 2
        """
    ).fetchall()
    return [(name, signature, list(types)) for name, signature, types in rows]


# On Citus, oq_distribute() makes openqueue.jobs and openqueue.schedules read these SECURITY DEFINER
# functions, which openqueue_admin (who may read the views) may execute; they exist only there.
CITUS_VIEW_FUNCTIONS = {"_jobs_rows", "_schedules_rows"}
# Views no write can go through on Citus, whoever asks: the views' old definitions, kept for the
# schema owner only, and openqueue.schedules, which reads _schedules_rows() there.
CITUS_UNWRITABLE_VIEWS = {"openqueue._jobs_all", "openqueue._schedules_all", "openqueue.schedules"}


def allowed(member_of: str | None, function: str) -> bool:
    if member_of == "openqueue_admin":
        return function.startswith("oq_") or function in CITUS_VIEW_FUNCTIONS
    if member_of == "openqueue_worker":
        return function in WORKER
    if member_of == "openqueue_producer":
        return function in PRODUCER
    return False


def null_call(name: str, types: list[str]) -> str:
    arguments = ", ".join(f"null::{t}" for t in types)
    return f"select * from openqueue.{name}({arguments})"


def sqlstate_of(conn: psycopg.Connection, sql: str, params: object = None) -> str | None:
    """Run sql; the SQLSTATE it fails with, or None when it succeeds."""
    try:
        with conn.transaction():
            conn.execute(sql, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def test_the_installer_made_three_nologin_roles(conn):
    rows = conn.execute(
        "select rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb from pg_roles "
        "where rolname like 'openqueue\\_%' order by 1"
    ).fetchall()
    assert rows == [
        ("openqueue_admin", False, False, False, False),
        ("openqueue_producer", False, False, False, False),
        ("openqueue_worker", False, False, False, False),
    ]


def test_the_grants_in_the_catalog_are_exactly_the_lists(conn, logins):
    functions = oq_functions(conn)
    assert {"oq_enqueue", "oq_lease", "oq_ack_many", "oq_set_queue_max_payload"} <= {
        f for f, _, _ in functions
    }
    for login in logins.values():
        for name, signature, _ in functions:
            may = conn.execute(
                "select has_function_privilege(%s, %s::regprocedure, 'execute')", (login.name, signature)
            ).fetchone()[0]
            assert may == allowed(login.member_of, name), (login.name, signature)
        usage = conn.execute(
            "select has_schema_privilege(%s, 'openqueue', 'usage')", (login.name,)
        ).fetchone()
        assert usage == (login.member_of is not None,), login.name


def test_each_role_may_call_exactly_its_list_and_gets_42501_for_every_other_function(conn, logins):
    """Called for real: NULL arguments, so a permitted call ends in 22004 or succeeds, never 42501."""
    functions = [f for f in oq_functions(conn) if f[0].startswith("oq_")]
    for login in logins.values():
        with login.connect() as own:
            own.execute("set statement_timeout = '10s'")
            for name, signature, types in functions:
                state = sqlstate_of(own, null_call(name, types))
                if allowed(login.member_of, name):
                    # oq_distribute: 0A000 without Citus (contract section 10), past the privilege check.
                    permitted = ("22", "0A000") if name == "oq_distribute" else ("22",)
                    assert state is None or state.startswith(permitted), (login.name, signature, state)
                else:
                    assert state == "42501", (login.name, signature, state)


def test_tables_views_the_sequence_and_internal_helpers_are_denied_to_every_role(conn, logins, pg_server):
    citus = pg_server.kind == "citus"
    relations = conn.execute(
        """
        select c.oid::regclass::text, c.relkind,
               (select a.attname from pg_attribute as a where a.attrelid = c.oid and a.attnum = 1)
        from pg_class as c
        where c.relnamespace = 'openqueue'::regnamespace and c.relkind in ('r', 'p', 'v', 'S')
        order by 1
        """
    ).fetchall()
    assert {("openqueue.job_id_seq", "S"), ("openqueue.live_jobs", "r")} <= {r[:2] for r in relations}
    helpers = [f for f in oq_functions(conn) if f[0].startswith("_")]
    trigger_functions = {
        name
        for (name,) in conn.execute(
            "select proname from pg_proc where pronamespace = 'openqueue'::regnamespace "
            "and prorettype = 'trigger'::regtype"
        )
    }
    assert helpers
    for login in logins.values():
        with login.connect() as own:
            for relation, kind, column in relations:
                statements = [f"select * from {relation}"]
                if kind == "S":
                    statements += [
                        f"select nextval('{relation}')",
                        f"select setval('{relation}', 1)",
                        f"select currval('{relation}')",
                    ]
                else:
                    statements += [
                        f"insert into {relation} default values",
                        f"update {relation} set {column} = {column} where false",
                        f"delete from {relation} where false",
                        f"truncate {relation}" if kind != "v" else f"delete from {relation}",
                    ]
                for sql in statements:
                    if kind == "v" and login.member_of == "openqueue_admin" and sql.startswith("select"):
                        continue  # admin's SELECT on openqueue.jobs: see test_admin_...
                    refused = {"42501"}
                    if citus and relation in CITUS_UNWRITABLE_VIEWS and not sql.startswith("select"):
                        # Citus only (oq_distribute): _jobs_all (a UNION) and schedules (a function's
                        # rows) are not updatable at all: PostgreSQL refuses a write with 55000
                        # before checking privileges; Citus refuses writes through a view over its
                        # tables (_schedules_all) with 0A000, for the owner too.
                        refused |= {"55000", "0A000"}
                    assert sqlstate_of(own, sql) in refused, (login.name, sql)
            for name, signature, types in helpers:
                # None of them, but on Citus openqueue_admin's functions behind the views.
                assert conn.execute(
                    "select has_function_privilege(%s, %s::regprocedure, 'execute')", (login.name, signature)
                ).fetchone() == (allowed(login.member_of, name),), (login.name, signature)
                if name not in trigger_functions and not allowed(login.member_of, name):
                    # (trigger functions cannot be called at all)
                    assert sqlstate_of(own, null_call(name, types)) == "42501", (login.name, name)
            assert sqlstate_of(own, "create table openqueue.planted (id int)") == "42501", login.name
            assert (
                sqlstate_of(
                    own, "create function openqueue.oq_planted() returns int language sql as 'select 1'"
                )
                == "42501"
            ), login.name


def test_a_worker_login_runs_the_whole_lifecycle_on_jobs_a_producer_enqueued(conn, logins):
    producer, worker = logins["producer"], logins["worker"]
    with Client(producer.dsn) as client:
        ids = client.enqueue_batch("mail", [{"n": n} for n in range(4)], max_attempts=2)
        single = client.enqueue("mail", {"n": 4}, idempotency_key="k")
        assert client.enqueue("mail", {"n": 4}, idempotency_key="k") == single
        assert {s.queue_name: s.pending for s in client.stats()} == {"mail": 5}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.lease("mail", "p")
    with worker.connect() as own, Client(own) as client:
        first = client.lease_many("mail", "w", batch_size=5)
        assert [x.job.id for x in first] == [*ids, single]
        a, b, c, d, e = first
        assert client.heartbeat(a.job.id, a.lease_token, lease_seconds=60) is not None
        assert client.ack(a.job.id, a.lease_token, result={"ok": 1}) is True
        assert client.nack(b.job.id, b.lease_token, "boom", retry_in=timedelta(0)) == "failed"
        assert ack_many(own, [c.job.id, d.job.id], [c.lease_token, d.lease_token]) == [c.job.id, d.job.id]
        expire_lease(conn, e.job.id)  # the owner moves time
        assert client.reap() == 1
        again = client.lease_many("mail", "w", batch_size=5)
        assert sorted(x.job.id for x in again) == sorted([b.job.id, e.job.id])
        for x in again:
            assert client.nack(x.job.id, x.lease_token, "fatal", retry=False) == "dead"
        assert client.next_run_at(["mail"]) is None
        assert client.schema_version() >= 3
        assert {s.queue_name: (s.completed, s.dead) for s in client.stats()} == {"mail": (3, 2)}
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.enqueue("mail", {})
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.cancel(a.job.id)


def test_the_worker_runtime_runs_as_a_worker_login(conn, logins):
    with Client(logins["producer"].dsn) as client:
        job_ids = client.enqueue_batch("runtime", [{"n": n} for n in range(5)])
        later = client.enqueue("runtime", {"n": "later"}, run_at=_db_now(conn) + timedelta(seconds=1))
    done: list[int] = []
    worker = Worker(
        logins["worker"].dsn,
        {"runtime": lambda job: done.append(job.id) or {"seen": job.id}},
        concurrency=2,
        poll_interval=0.5,
        reap_interval=0.2,
        handle_signals=False,
    )
    _run_until(worker, lambda: len(done) >= 6)
    assert sorted(done) == sorted([*job_ids, later])
    rows = conn.execute(
        "select status, count(*) from openqueue.jobs where queue_name = 'runtime' group by 1"
    ).fetchall()
    assert rows == [("completed", 6)]


def _run_until(worker: Worker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run ``worker`` in a thread until ``done()`` (or ``timeout`` seconds), then stop it."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(timeout=30)


def _db_now(conn: psycopg.Connection):
    return conn.execute("select now()").fetchone()[0]


def test_admin_cancels_replays_purges_configures_and_reads_jobs_but_never_lease_token(conn, logins):
    with Client(logins["producer"].dsn) as producer:
        queued = producer.enqueue("ops", {"n": 1})
        running = producer.enqueue("ops", {"n": 2})
    with Client(logins["worker"].dsn) as worker:
        held = worker.lease("ops", "w")
    assert held is not None and held.job.id == queued
    with logins["admin"].connect() as own, Client(own) as admin:
        columns = "id, queue_name, payload, status, leased_by, lease_expires_at, result, errors, finished_at"
        rows = own.execute(f"select {columns} from openqueue.jobs order by id").fetchall()
        assert [(r[0], r[3], r[4]) for r in rows] == [(queued, "processing", "w"), (running, "pending", None)]
        assert admin.get_job(queued).status == "processing"
        for sql in (
            "select lease_token from openqueue.jobs",
            "select * from openqueue.jobs",
            "select j from openqueue.jobs as j",
            "select to_jsonb(j) from openqueue.jobs as j",
            "select count(*) from openqueue.jobs where lease_token is not null",
        ):
            assert sqlstate_of(own, sql) == "42501", sql
        assert sqlstate_of(own, "update openqueue.jobs set priority = 5 where id = %s", (running,)) == "42501"
        assert sqlstate_of(own, "delete from openqueue.jobs where id = %s", (running,)) == "42501"

        admin.configure_queue("ops", max_attempts=3, lease_seconds=10)
        admin.set_queue_max_payload("ops", 1000)
        assert admin.cancel(queued) is True  # revokes the worker's lease
        assert admin.replay(queued) is True
        assert admin.cancel(running) is True
        assert admin.purge(timedelta(0)) == 1
        assert {s.queue_name: (s.pending, s.cancelled) for s in admin.stats()} == {"ops": (1, 0)}
    with Client(logins["worker"].dsn) as worker:
        assert worker.ack(held.job.id, held.lease_token) is False  # cancelled and replayed since
    settings = conn.execute(
        "select max_attempts, lease_seconds, max_payload_bytes from openqueue.queues "
        "join openqueue.queue_limits using (queue_name) where queue_name = 'ops'"
    ).fetchone()
    assert settings == (3, 10, 1000)


def test_no_role_may_see_a_lease_token_in_openqueue_jobs(conn, logins):
    for login in logins.values():
        assert conn.execute(
            "select has_column_privilege(%s, 'openqueue.jobs', 'lease_token', 'select')", (login.name,)
        ).fetchone() == (False,), login.name
    # The owner still does (the view keeps the column for operators and tests).
    assert conn.execute("select count(lease_token) from openqueue.jobs").fetchone() == (0,)


def test_without_the_lease_token_no_one_completes_fails_extends_or_sees_another_workers_lease(conn, logins):
    with Client(logins["producer"].dsn) as producer:
        job_id = producer.enqueue("fence", {"secret": True})
        other_id = producer.enqueue("fence", {"other": True})
    with Client(logins["worker"].dsn) as worker:
        held = worker.lease("fence", "honest")
        assert held is not None and held.job.id == job_id
    before = conn.execute("select to_jsonb(j) from openqueue.jobs as j where id = %s", (job_id,)).fetchone()

    with logins["worker2"].connect() as own, Client(own) as thief:
        own_lease = thief.lease("fence", "thief")
        assert own_lease is not None and own_lease.job.id == other_id  # never the held job
        assert thief.lease("fence", "thief") is None
        for token in (uuid.uuid4(), own_lease.lease_token, uuid.UUID(int=0)):
            assert thief.ack(job_id, token, result={"stolen": True}) is False
            assert thief.nack(job_id, token, "sabotage") is None
            assert thief.nack(job_id, token, "sabotage", retry=False) is None
            assert thief.heartbeat(job_id, token, lease_seconds=86400) is None
            assert ack_many(own, [job_id], [token]) == []
        # No way to read the token: not the view, not the tables, not the functions.
        for sql in (
            "select lease_token from openqueue.jobs",
            "select lease_token from openqueue.live_jobs",
            "select * from openqueue.jobs",
        ):
            assert sqlstate_of(own, sql) == "42501", sql
        stats = own.execute("select to_jsonb(s)::text from openqueue.oq_stats() as s").fetchall()
        assert str(held.lease_token) not in str(stats)

    after = conn.execute("select to_jsonb(j) from openqueue.jobs as j where id = %s", (job_id,)).fetchone()
    assert after == before
    with Client(logins["worker"].dsn) as worker:
        assert worker.ack(job_id, held.lease_token) is True


def test_a_login_with_no_openqueue_role_can_do_nothing(conn, logins):
    with logins["nobody"].connect() as own:
        assert sqlstate_of(own, "select openqueue.oq_stats()") == "42501"
        assert sqlstate_of(own, "select openqueue.oq_enqueue('q', %s)", (Jsonb({}),)) == "42501"
        assert sqlstate_of(own, "select count(*) from openqueue.jobs") == "42501"


def test_a_worker_login_without_oq_limited_queues_still_works(conn, logins, caplog):
    """Granted the worker's functions by hand, all but the one version 8 added: it logs, and runs."""
    login = logins["nobody"]
    grants = test_install_roles.readme_worker_grants().replace("app_worker", login.name)
    grants = grants.replace("    openqueue.oq_limited_queues(text[]),\n", "")
    assert "oq_limited_queues" not in grants
    conn.execute(grants)  # as the owner, in this database
    try:
        with Client(conn) as owner_client:
            job_ids = owner_client.enqueue_batch("handgranted", [{"n": n} for n in range(3)])
        done: list[int] = []
        worker = Worker(
            login.dsn,
            {"handgranted": lambda job: done.append(job.id)},
            poll_interval=0.5,
            handle_signals=False,
        )
        caplog.set_level(logging.INFO, logger="openqueue.worker")
        _run_until(worker, lambda: len(done) >= 3)
    finally:
        conn.execute(f"drop owned by {login.name}")  # its grants, so that the role can be dropped
    assert sorted(done) == sorted(job_ids)
    refused = [r for r in caplog.records if getattr(r, "event", None) == "worker.limits_unavailable"]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert "InsufficientPrivilege" in refused[0].error
