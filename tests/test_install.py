"""Install and upgrade (CONTRACT section 1): psql -f, install(), the CLI, all one path.

Catalog snapshots compare what an install leaves behind; "nothing changed"
means the same functions (with their oids: nothing dropped and recreated),
relations, indexes, constraints, triggers and schema_migrations rows.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import openqueue_py
from openqueue_py import Client, InvalidArgument, OpenQueueError, SchemaTooNew
from openqueue_py.cli import main as cli_main
from openqueue_py.errors import SQLSTATE_ERRORS
from openqueue_py.migrate import (
    Migration,
    install_async,
    installer_sql,
    latest_version,
    load_migrations,
    render_installer,
)

REPO = Path(__file__).resolve().parent.parent
INSTALLER = REPO / "sql" / "openqueue.sql"

_counter = itertools.count()


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def make_empty_db(pg_server) -> Iterator[Callable[[], str]]:
    """Create extra empty databases (dropped afterwards); returns their DSNs."""
    names: list[str] = []

    def make() -> str:
        name = f"oq_install_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')
            admin.execute(f'create database "{name}"')
        names.append(name)
        return pg_server.dsn(name)

    yield make
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(f'drop database if exists "{name}" with (force)')


def run_psql(pg_server, dsn: str, path: Path = INSTALLER) -> subprocess.CompletedProcess:
    return subprocess.run(
        [pg_server.psql(), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CATALOG_QUERIES = {
    "functions": """
        select p.oid::regprocedure::text, pg_get_function_arguments(p.oid), p.prosrc,
               p.proconfig, p.proacl::text, pg_get_function_result(p.oid),
               obj_description(p.oid, 'pg_proc'), {oid_p}
        from pg_proc as p
        where p.pronamespace = to_regnamespace('openqueue')
        order by 1
    """,
    "relations": """
        select c.relname, c.relkind, c.reloptions, c.relpersistence, c.relacl::text,
               obj_description(c.oid, 'pg_class'),
               case when c.relkind = 'v' then pg_get_viewdef(c.oid) end, {oid_c}
        from pg_class as c
        where c.relnamespace = to_regnamespace('openqueue')
        order by 1
    """,
    "columns": """
        select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        from pg_attribute as a
        join pg_class as c on c.oid = a.attrelid
        left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace = to_regnamespace('openqueue') and a.attnum > 0 and not a.attisdropped
        order by 1, 2
    """,
    "indexes": """
        select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), {oid_i}
        from pg_index as i
        join pg_class as c on c.oid = i.indrelid
        where c.relnamespace = to_regnamespace('openqueue')
        order by 1
    """,
    "constraints": """
        select n.conrelid::regclass::text, n.conname, pg_get_constraintdef(n.oid), {oid_n}
        from pg_constraint as n
        where n.connamespace = to_regnamespace('openqueue')
        order by 1, 2
    """,
    "triggers": """
        select t.tgname, pg_get_triggerdef(t.oid)
        from pg_trigger as t
        join pg_class as c on c.oid = t.tgrelid
        where c.relnamespace = to_regnamespace('openqueue') and not t.tgisinternal
        order by 1
    """,
    "schemas": """
        select nspname, obj_description(oid, 'pg_namespace')
        from pg_namespace
        where nspname not like 'pg\\_temp\\_%' and nspname not like 'pg\\_toast\\_temp\\_%'
        order by 1
    """,
    "extensions": "select extname, extversion from pg_extension order by 1",
}

PUBLIC_QUERIES = {
    "public relations": "select relname, relkind from pg_class "
    "where relnamespace = 'public'::regnamespace order by 1",
    "public functions": "select oid::regprocedure::text from pg_proc "
    "where pronamespace = 'public'::regnamespace order by 1",
    "public types": "select typname from pg_type where typnamespace = 'public'::regnamespace order by 1",
    "public operators": "select oprname from pg_operator where oprnamespace = 'public'::regnamespace",
}


def catalog(dsn: str, *, identity: bool) -> dict[str, list[tuple]]:
    """What an install leaves in the catalog.

    ``identity``: also the objects' oids and the migrations' applied_at, so
    that a snapshot of one database detects anything dropped and recreated.
    Without it, snapshots of different databases compare.
    """
    oids = {"oid_p": "p.oid", "oid_c": "c.oid", "oid_i": "i.indexrelid", "oid_n": "n.oid"}
    if not identity:
        oids = dict.fromkeys(oids, "null")
    with psycopg.connect(dsn, autocommit=True) as conn:
        snapshot = {}
        for name, query in CATALOG_QUERIES.items():
            snapshot[name] = conn.execute(query.format(**oids)).fetchall()
        for name, query in PUBLIC_QUERIES.items():
            snapshot[name] = conn.execute(query).fetchall()
        if conn.execute("select to_regclass('openqueue.schema_migrations')").fetchone()[0]:
            applied = "applied_at" if identity else "null"
            snapshot["migrations"] = conn.execute(
                f"select version, name, {applied} from openqueue.schema_migrations order by 1"
            ).fetchall()
    return snapshot


def migration_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("select version, name from openqueue.schema_migrations order by 1").fetchall()


def expected_migration_rows() -> list[tuple]:
    return [(m.version, m.name) for m in load_migrations()]


# -- psql -f ---------------------------------------------------------------------------


def test_psql_installs_into_an_empty_database_and_a_second_run_changes_nothing(pg_server, empty_dsn):
    empty = catalog(empty_dsn, identity=True)
    assert "migrations" not in empty

    first = run_psql(pg_server, empty_dsn)
    assert first.returncode == 0, first.stderr
    assert "applied migration 0001_init" in first.stderr
    installed = catalog(empty_dsn, identity=True)
    assert migration_rows(empty_dsn) == expected_migration_rows()
    assert installed["functions"] and installed["relations"]

    # Nothing in public, no extension, no schema but openqueue.
    for name in (*PUBLIC_QUERIES, "extensions"):
        assert installed[name] == empty[name], name
    assert {s for s, _ in installed["schemas"]} - {s for s, _ in empty["schemas"]} == {"openqueue"}

    second = run_psql(pg_server, empty_dsn)
    assert second.returncode == 0, second.stderr
    assert "applied migration" not in second.stderr
    assert catalog(empty_dsn, identity=True) == installed


def test_install_dsn_install_connection_cli_and_psql_build_the_same_schema(pg_server, make_empty_db):
    by_psql = make_empty_db()
    assert run_psql(pg_server, by_psql).returncode == 0
    reference = catalog(by_psql, identity=False)

    by_dsn = make_empty_db()
    openqueue_py.install(by_dsn)
    assert catalog(by_dsn, identity=False) == reference

    by_connection = make_empty_db()
    with psycopg.connect(by_connection) as conn:  # not autocommit, but idle: install may use it
        openqueue_py.install(conn)
        assert conn.autocommit is False  # restored afterwards
        assert conn.execute("select 1").fetchone() == (1,)  # still usable
    assert catalog(by_connection, identity=False) == reference

    by_autocommit_connection = make_empty_db()
    with psycopg.connect(by_autocommit_connection, autocommit=True) as conn:
        openqueue_py.install(conn)
        openqueue_py.install(conn)
    assert catalog(by_autocommit_connection, identity=False) == reference

    by_cli = make_empty_db()
    result = CliRunner().invoke(cli_main, ["install", "--dsn", by_cli])
    assert result.exit_code == 0, result.output
    assert catalog(by_cli, identity=False) == reference

    # And all of them are what the session's template (built by install()) holds.
    for dsn in (by_dsn, by_connection, by_cli):
        assert migration_rows(dsn) == expected_migration_rows()


def test_install_refuses_a_connection_inside_a_transaction(empty_dsn):
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("select 1")  # opens a transaction
        with pytest.raises(InvalidArgument):
            openqueue_py.install(conn)
        conn.rollback()
        assert conn.execute("select to_regnamespace('openqueue')").fetchone() == (None,)


def test_second_install_through_python_changes_nothing(dsn):
    before = catalog(dsn, identity=True)
    openqueue_py.install(dsn)
    with psycopg.connect(dsn) as conn:
        openqueue_py.install(conn)
    assert catalog(dsn, identity=True) == before


def test_concurrent_installs(empty_dsn):
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            barrier.wait(timeout=30)
            openqueue_py.install(empty_dsn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert migration_rows(empty_dsn) == expected_migration_rows()
    with Client(empty_dsn) as client:
        job_id = client.enqueue("after-race", {})
        assert client.lease("after-race", "w").job.id == job_id


def test_concurrent_psql_and_python_installs(pg_server, empty_dsn):
    processes = [
        subprocess.Popen(
            [pg_server.psql(), empty_dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(INSTALLER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    openqueue_py.install(empty_dsn)
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    assert migration_rows(empty_dsn) == expected_migration_rows()


# -- the generated installer -------------------------------------------------------------


def test_installer_is_up_to_date_with_the_migrations():
    expected = render_installer(load_migrations())
    assert INSTALLER.read_text() == expected, "sql/openqueue.sql is stale: run `make sql`"
    assert installer_sql() == expected
    assert latest_version() == len(load_migrations())


# -- a newer schema ------------------------------------------------------------------------


def test_a_newer_schema_is_refused_and_nothing_changes(pg_server, dsn, conn):
    too_new = latest_version() + 1
    conn.execute(
        "insert into openqueue.schema_migrations (version, name) values (%s, %s)",
        (too_new, f"{too_new:04d}_from_the_future"),
    )
    with Client(conn) as client:
        job_id = client.enqueue("keep", {"n": 1})
    before = catalog(dsn, identity=True)

    with pytest.raises(SchemaTooNew) as info:
        openqueue_py.install(dsn)
    assert isinstance(info.value, OpenQueueError)
    assert isinstance(info.value.__cause__, psycopg.Error)
    assert info.value.__cause__.sqlstate == "OQ001"
    assert str(too_new) in str(info.value)
    assert catalog(dsn, identity=True) == before

    # On a caller's connection, the failed run is rolled back and the connection stays usable.
    for autocommit in (False, True):
        with psycopg.connect(dsn, autocommit=autocommit) as other:
            with pytest.raises(SchemaTooNew):
                openqueue_py.install(other)
            assert other.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert other.autocommit is autocommit
            assert other.execute("select count(*) from openqueue.jobs").fetchone() == (1,)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as other:
            with pytest.raises(SchemaTooNew):
                await install_async(other)
            assert other.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert other.autocommit is False

    asyncio.run(scenario())

    result = run_psql(pg_server, dsn)
    assert result.returncode != 0
    assert "newer than this installer" in result.stderr
    assert catalog(dsn, identity=True) == before
    assert conn.execute("select payload from openqueue.jobs where id = %s", (job_id,)).fetchone() == (
        {"n": 1},
    )


# -- upgrades keep the jobs ----------------------------------------------------------------


JOB_QUERY = "select * from openqueue.jobs order by id"


def _jobs_in_every_state(dsn: str) -> dict[str, object]:
    """Jobs in all six states, plus queue settings and an idempotency key."""
    with Client(dsn) as client:
        client.configure_queue("up", max_attempts=3, backoff_base=timedelta(seconds=2))
        completed, dead, cancelled, failed, processing, pending = (
            client.enqueue("up", {"n": n}, idempotency_key=f"k{n}") for n in range(6)
        )
        future = client.enqueue("up", {"later": True}, run_at=datetime.now(UTC) + timedelta(days=1))
        leases = {x.job.id: x for x in client.lease_many("up", "w", batch_size=5)}
        client.ack(completed, leases[completed].lease_token, result={"ok": True})
        client.nack(dead, leases[dead].lease_token, "fatal", retry=False)
        client.cancel(cancelled)
        client.nack(failed, leases[failed].lease_token, "retry me", retry_in=timedelta(hours=1))
        return {
            "processing": leases[processing],
            "pending": pending,
            "future": future,
        }


def _state(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        return {
            "jobs": conn.execute(JOB_QUERY).fetchall(),
            "queues": conn.execute("select * from openqueue.queues order by 1").fetchall(),
            "keys": conn.execute("select * from openqueue.idempotency_keys order by 1, 2").fetchall(),
            "next id": conn.execute(
                "select last_value from openqueue.job_id_seq"  # no nextval: nothing consumed
            ).fetchall(),
        }


def test_reinstall_keeps_jobs_in_every_state(pg_server, empty_dsn):
    assert run_psql(pg_server, empty_dsn).returncode == 0
    _jobs_in_every_state(empty_dsn)
    before = _state(empty_dsn)
    statuses = sorted(row[3] for row in before["jobs"])
    assert set(statuses) == {"pending", "processing", "failed", "completed", "dead", "cancelled"}

    assert run_psql(pg_server, empty_dsn).returncode == 0
    openqueue_py.install(empty_dsn)
    assert CliRunner().invoke(cli_main, ["install", "--dsn", empty_dsn]).exit_code == 0
    assert _state(empty_dsn) == before


def test_upgrade_applies_only_the_missing_migration_and_keeps_jobs(pg_server, empty_dsn, tmp_path):
    assert run_psql(pg_server, empty_dsn).returncode == 0
    held = _jobs_in_every_state(empty_dsn)
    before_state = _state(empty_dsn)
    before_catalog = catalog(empty_dsn, identity=True)

    # A future release: one more migration on top of the shipped ones.
    migrations = load_migrations()
    nxt = len(migrations) + 1
    probe = Migration(
        nxt,
        f"{nxt:04d}_upgrade_probe",
        "create table openqueue.upgrade_probe (id integer);\n"
        "comment on table openqueue.upgrade_probe is 'test only';\n",
    )
    newer = tmp_path / "openqueue_next.sql"
    newer.write_text(render_installer([*migrations, probe]))
    result = run_psql(pg_server, empty_dsn, newer)
    assert result.returncode == 0, result.stderr
    assert f"applied migration {probe.name}" in result.stderr
    assert "applied migration 0001_init" not in result.stderr

    assert migration_rows(empty_dsn) == [*expected_migration_rows(), (nxt, probe.name)]
    after_catalog = catalog(empty_dsn, identity=True)
    # Everything of the earlier versions is the very same object (not recreated).
    for name in ("functions", "relations", "indexes", "constraints", "triggers", "columns"):
        kept = [row for row in after_catalog[name] if "upgrade_probe" not in str(row)]
        assert kept == before_catalog[name], name
    assert ("upgrade_probe", "r") in {row[:2] for row in after_catalog["relations"]}
    assert after_catalog["migrations"][:-1] == before_catalog["migrations"]
    assert _state(empty_dsn) == before_state

    # The upgraded database still works, and a lease taken before the upgrade holds.
    with Client(empty_dsn) as client:
        leased = held["processing"]
        assert client.ack(leased.job.id, leased.lease_token) is True
        again = client.lease("up", "w")
        assert again is not None and again.job.id == held["pending"]

    # Running the newer installer again is a no-op; the older one now refuses.
    assert run_psql(pg_server, empty_dsn, newer).returncode == 0
    assert migration_rows(empty_dsn)[-1] == (nxt, probe.name)
    with pytest.raises(SchemaTooNew):
        openqueue_py.install(empty_dsn)


# -- catalog and style -----------------------------------------------------------------------


def test_every_function_is_commented_pinned_and_not_public(conn):
    rows = conn.execute(
        """
        select p.oid::regprocedure::text,
               obj_description(p.oid, 'pg_proc'),
               p.proconfig,
               p.proacl is not null,
               exists (
                   select from aclexplode(p.proacl) as a
                   where a.grantee = 0 and a.privilege_type = 'EXECUTE'
               ),
               has_function_privilege('public', p.oid, 'execute')
        from pg_proc as p
        where p.pronamespace = to_regnamespace('openqueue')
        order by 1
        """
    ).fetchall()
    assert any(name.startswith("openqueue.oq_enqueue(") for name, *_ in rows)
    for name, comment, config, has_acl, public_grant, public_execute in rows:
        assert comment and comment.strip(), f"{name} has no comment"
        settings = [s for s in (config or []) if s.startswith("search_path=")]
        assert settings, f"{name} does not pin search_path"
        path = [part.strip() for part in settings[0].removeprefix("search_path=").split(",")]
        assert "pg_catalog" in path and path[-1] == "pg_temp", f"{name}: search_path {path}"
        assert has_acl, f"{name} has the default ACL (executable by PUBLIC)"
        assert not public_grant, f"{name} is granted to PUBLIC"
        assert not public_execute, f"{name} is executable by PUBLIC"


def test_every_oq_errcode_is_mapped():
    codes: set[str] = set()
    for path in (REPO / "sql").rglob("*.sql"):
        codes |= set(re.findall(r"'(OQ[0-9A-Z]{3})'", path.read_text(), flags=re.IGNORECASE))
    codes = {c.upper() for c in codes}
    assert "OQ001" in codes
    assert codes <= set(SQLSTATE_ERRORS), f"unmapped: {codes - set(SQLSTATE_ERRORS)}"
    assert set(SQLSTATE_ERRORS) <= codes, f"mapped but never raised: {set(SQLSTATE_ERRORS) - codes}"
    for code, error in SQLSTATE_ERRORS.items():
        assert issubclass(error, OpenQueueError), code
    assert SQLSTATE_ERRORS["OQ001"] is SchemaTooNew


def test_upgrade_from_version_1_keeps_every_job_and_every_lease(pg_server, empty_dsn, tmp_path):
    """A version 1 database with jobs in every state, upgraded by the shipped installer."""
    v1 = tmp_path / "openqueue_v1.sql"
    v1.write_text(render_installer(load_migrations()[:1]))
    first = run_psql(pg_server, empty_dsn, v1)
    assert first.returncode == 0, first.stderr
    assert migration_rows(empty_dsn) == [(1, "0001_init")]
    held = _jobs_in_every_state(empty_dsn)
    before = _state(empty_dsn)
    assert {row[3] for row in before["jobs"]} == {
        "pending",
        "processing",
        "failed",
        "completed",
        "dead",
        "cancelled",
    }

    result = run_psql(pg_server, empty_dsn)
    assert result.returncode == 0, result.stderr
    assert "applied migration 0001_init" not in result.stderr
    for migration in load_migrations()[1:]:
        assert f"applied migration {migration.name}" in result.stderr
    assert migration_rows(empty_dsn) == expected_migration_rows()
    after = _state(empty_dsn)
    # Version 2 adds a column to openqueue.queues (notify_mode), at the end, 'always' for all;
    # version 4 adds the flow control settings after it: not paused, no limits.
    queues = after.pop("queues")
    assert [row[:7] for row in queues] == before.pop("queues")
    assert {row[7] for row in queues} == {"always"}
    assert {row[8:12] for row in queues} == {(False, None, None, timedelta(seconds=1))}
    assert after == before  # every job, key and the sequence, as they were

    with Client(empty_dsn) as client:
        stats = {s.queue_name: s for s in client.stats()}["up"]
        assert (stats.pending, stats.processing, stats.failed) == (2, 1, 1)
        assert (stats.completed, stats.dead, stats.cancelled) == (1, 1, 1)
        # The lease taken before the upgrade still holds: heartbeat, then ack with the old token.
        leased = held["processing"]
        assert client.heartbeat(leased.job.id, leased.lease_token) is not None
        assert client.ack(leased.job.id, leased.lease_token, result={"after": "upgrade"}) is True
        # Only the due pending job is leased: the failed one waits an hour, the future one a day.
        again = client.lease_many("up", "w", batch_size=10)
        assert [x.job.id for x in again] == [held["pending"]]
        stats = {s.queue_name: s for s in client.stats()}["up"]
        assert (stats.completed, stats.processing) == (2, 1)

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        # The failed and the scheduled job become leasable when their time comes.
        conn.execute("update openqueue.jobs set run_at = now() - interval '1 second' where status = 'failed'")
        conn.execute(
            "update openqueue.jobs set run_at = now() - interval '1 second' where id = %s", (held["future"],)
        )
        rows = conn.execute("select id from openqueue.oq_lease('up', 'w', batch_size => 10)").fetchall()
        assert len(rows) == 2 and held["future"] in {r[0] for r in rows}
        # Errors recorded before the upgrade are kept; an idempotency key still deduplicates.
        errors = conn.execute("select errors from openqueue.jobs where status = 'dead'").fetchone()[0]
        assert [e["error"] for e in errors] == ["fatal"]
        key_owner = conn.execute(
            "select job_id from openqueue.idempotency_keys where idempotency_key = 'k0'"
        ).fetchone()[0]
        again_id = conn.execute(
            "select openqueue.oq_enqueue('up', '{}', idempotency_key => 'k0')"
        ).fetchone()[0]
        assert again_id == key_owner
