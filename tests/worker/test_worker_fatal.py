"""Errors no retry can cure end the worker at once, in one line; transient ones do not.

A DSN that cannot connect, a database without the schema (or with another
version), a role without the worker's privileges: ``run()`` raises within a
few seconds and ``openqueue worker`` exits non-zero with one line on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from openqueue_py import Client, ConnectionFailed, NotInstalled, SchemaTooNew
from openqueue_py.errors import WorkerError
from openqueue_py.migrate import latest_version
from openqueue_py.worker.startup import UNREACHABLE_RETRY_SECONDS

from .conftest import REPO, make_worker, running, wait_until

HANDLERS = "tests.worker.handlers"


def _run_fails(dsn: str, **options: Any) -> tuple[BaseException, float]:
    """Run a worker that should not start; the error and how long run() took."""
    worker = make_worker(dsn, {"q": lambda job: None}, handle_signals=False, **options)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        worker.run()
    return caught.value, time.monotonic() - started


@pytest.fixture
def login_role(pg_server: Any, dsn: str) -> Iterator[Callable[..., str]]:
    """Create LOGIN roles for the test (dropped afterwards); returns a DSN for each."""
    created: list[str] = []

    def make(*grants: str) -> str:
        name = f"oq_login_{os.getpid()}_{len(created)}"
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f"drop role if exists {name}")
            admin.execute(f"create role {name} login")
            for grant in grants:
                admin.execute(f"grant {grant} to {name}")
        created.append(name)
        return make_conninfo(dsn, user=name)

    yield make
    with psycopg.connect(dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(f"drop owned by {name}")
            admin.execute(f"drop role {name}")


def test_a_database_without_the_schema_raises_not_installed_at_once(empty_dsn: str) -> None:
    error, took = _run_fails(empty_dsn)
    assert isinstance(error, NotInstalled)
    assert "openqueue install" in str(error) and "\n" not in str(error)
    assert took < 5


def test_a_newer_schema_raises_schema_too_new(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into openqueue.schema_migrations (version, name) values (%s, 'from_the_future')",
            (latest_version() + 1,),
        )
    error, took = _run_fails(dsn)
    assert isinstance(error, SchemaTooNew)
    assert f"version {latest_version() + 1} is newer" in str(error) and "\n" not in str(error)
    assert took < 5


def test_an_older_schema_raises_not_installed_saying_to_upgrade(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("delete from openqueue.schema_migrations where version = %s", (latest_version(),))
    error, _ = _run_fails(dsn)
    assert isinstance(error, NotInstalled)
    assert "is older than this package" in str(error) and "openqueue install" in str(error)


def test_a_role_without_the_worker_privileges_raises_permission_denied(
    login_role: Callable[..., str],
) -> None:
    error, took = _run_fails(login_role())
    assert isinstance(error, WorkerError)
    message = str(error)
    assert "permission denied" in message and "42501" in message and "openqueue_worker" in message
    assert "\n" not in message
    assert took < 5


def test_a_role_granted_openqueue_worker_runs_jobs(
    login_role: Callable[..., str], client: Client, events: Any
) -> None:
    """Everything the worker runtime calls (lease, heartbeat, ack, nack, reap, schedule) is in the role."""
    worker_dsn = login_role("openqueue_worker")
    ids = client.enqueue_batch("q", [{"n": n} for n in range(5)])
    failing = client.enqueue("boom", {})
    slow = client.enqueue("slow", {})
    done: list[int] = []

    def boom(job: Any) -> None:
        raise RuntimeError("boom")

    worker = make_worker(
        worker_dsn,
        {"q": lambda job: done.append(job.id), "boom": boom, "slow": lambda job: time.sleep(1.0)},
        handle_signals=False,
        lease_seconds=1,
        reap_interval=0.2,
    )
    with running(worker):
        # The slow job outlives a third of its 1 s lease: it is heartbeated.
        wait_until(lambda: len(done) == 5 and events.named("job.failed"), timeout=30)
        wait_until(lambda: events.named("job.completed", job_id=slow), timeout=30)
    assert sorted(done) == ids
    assert events.named("job.heartbeat") and not events.named("worker.db_error")
    assert client.get_job(failing).status == "failed"


_BAD = {"port": "1", "dbname": "no_such_db", "user": "no_such_role"}


@pytest.mark.parametrize("change", sorted(_BAD))
def test_a_dsn_that_cannot_connect_raises_connection_failed_at_once(dsn: str, change: str) -> None:
    error, took = _run_fails(make_conninfo(dsn, **{change: _BAD[change]}))
    assert isinstance(error, ConnectionFailed)
    assert str(error).startswith("cannot connect to PostgreSQL: ") and "\n" not in str(error)
    # A server that answers "no" fails at once; one that does not answer (a
    # wrong port, or a restart) is retried for UNREACHABLE_RETRY_SECONDS.
    assert took < (2 if change != "port" else UNREACHABLE_RETRY_SECONDS + 3)


def test_a_listen_dsn_that_cannot_connect_raises_connection_failed(dsn: str) -> None:
    error, _ = _run_fails(dsn, listen_dsn=make_conninfo(dsn, dbname="no_such_db"))
    assert isinstance(error, ConnectionFailed) and "no_such_db" in str(error)


def test_a_schema_dropped_while_running_ends_run_with_not_installed(dsn: str, events: Any) -> None:
    worker = make_worker(dsn, {"q": lambda job: None}, handle_signals=False, poll_interval=0.1)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_until(lambda: events.named("worker.started"), timeout=10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop schema openqueue cascade")
    thread.join(10)
    assert not thread.is_alive(), "run() kept retrying after the schema was dropped"
    assert len(errors) == 1 and isinstance(errors[0], NotInstalled), errors
    assert events.named("worker.stopped")


def _cli(dsn: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OPENQUEUE_DSN", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "openqueue_py", "worker", "--dsn", dsn, "--queue", f"q={HANDLERS}:echo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        ("no schema", 4, "openqueue install"),
        ("bad port", 3, "cannot connect to PostgreSQL"),
        ("no privileges", 1, "permission denied"),
    ],
)
def test_the_worker_command_exits_non_zero_with_one_line(
    case: str, status: int, says: str, empty_dsn: str, dsn: str, login_role: Callable[..., str]
) -> None:
    target = {"no schema": empty_dsn, "bad port": make_conninfo(dsn, port="1"), "no privileges": ""}[case]
    if case == "no privileges":
        target = login_role()
    done, took = _cli(target)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, done.stderr
    assert len(lines) == 1 and lines[0].startswith("openqueue: ") and says in lines[0], done.stderr
    assert took < UNREACHABLE_RETRY_SECONDS + 5
