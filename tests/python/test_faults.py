"""Faults around the client: a bad DSN, a database without OpenQueue, a server restart.

Real servers throughout: a wrong host, port, role or database is tried
against the session's server, a wrong password against a private embedded
server whose pg_hba.conf asks for one, a host that never answers against a
socket that accepts and stays silent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

import openqueue_py
from openqueue_py import AsyncClient, Client, ConnectionFailed, InvalidArgument, NotInstalled
from openqueue_py._connect import DEFAULT_CONNECT_TIMEOUT
from openqueue_py.cli import EXIT_CANNOT_CONNECT, EXIT_NOT_INSTALLED, EXIT_USAGE
from openqueue_py.embedded import FAST_SETTINGS, EmbeddedPostgres
from openqueue_py.errors import NOT_INSTALLED_MESSAGE

OPENQUEUE = Path(sys.executable).parent / "openqueue"
QUICK = 3.0  # seconds: a refused connection, for Client
CLI_QUICK = 5.0  # seconds: the same from a fresh process (Python start-up included)
PASSWORD_ROLE = "oq_password_role"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def password_server() -> Iterator[str]:
    """A private server that checks passwords; yields the DSN of a role whose password is 'right'."""
    with EmbeddedPostgres(settings=FAST_SETTINGS) as private:
        assert private.data_dir is not None
        with psycopg.connect(private.dsn(), autocommit=True) as conn:
            conn.execute("set password_encryption = 'scram-sha-256'")
            conn.execute(f"create role {PASSWORD_ROLE} login password 'right'")
            hba = private.data_dir / "pg_hba.conf"
            rules = f"local all {PASSWORD_ROLE} scram-sha-256\nhost all {PASSWORD_ROLE} all scram-sha-256\n"
            hba.write_text(rules + hba.read_text())
            conn.execute("select pg_reload_conf()")
        dsn = make_conninfo(private.dsn(), user=PASSWORD_ROLE, password="right")
        psycopg.connect(dsn).close()  # the right password works
        yield dsn


# (name, how to spoil a good DSN, what the one line must say)
FAULTS: dict[str, tuple[Callable[[str, str], str], str]] = {
    "database": (
        lambda good, pw: make_conninfo(good, dbname="oq_no_such_db"),
        '"oq_no_such_db" does not exist',
    ),
    "role": (
        lambda good, pw: make_conninfo(good, user="oq_no_such_role"),
        '"oq_no_such_role" does not exist',
    ),
    "port": (lambda good, pw: make_conninfo(good, host="127.0.0.1", port=_free_port()), "refused"),
    "host": (lambda good, pw: make_conninfo(good, host="no-such-host.invalid"), "no-such-host.invalid"),
    "password": (lambda good, pw: make_conninfo(pw, password="wrong"), "password authentication failed"),
}


@pytest.fixture(params=sorted(FAULTS))
def bad_dsn(request, pg_server, password_server) -> tuple[str, str]:
    spoil, expected = FAULTS[request.param]
    return spoil(pg_server.admin_dsn, password_server), expected


def _one_connection_failure(exc: ConnectionFailed, expected: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert message.startswith("cannot connect to PostgreSQL: ")
    assert expected in message
    assert isinstance(exc, psycopg.OperationalError)  # code retrying on those still does
    assert isinstance(exc.__cause__, psycopg.OperationalError)


# -- Client and AsyncClient ----------------------------------------------------------


def test_client_raises_connection_failed_at_once(bad_dsn, caplog) -> None:
    dsn, expected = bad_dsn
    caplog.set_level(logging.INFO, logger="psycopg.pool")
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as raised, Client(dsn) as client:
        client.stats()
    elapsed = time.monotonic() - started
    assert elapsed < QUICK, f"{elapsed:.2f} s"
    _one_connection_failure(raised.value, expected)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no pool retry chatter


def test_async_client_raises_connection_failed_at_once(bad_dsn) -> None:
    dsn, expected = bad_dsn

    async def scenario() -> None:
        async with AsyncClient(dsn) as client:
            await client.enqueue("q", {})

    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as raised:
        asyncio.run(scenario())
    assert time.monotonic() - started < QUICK
    _one_connection_failure(raised.value, expected)


def test_install_raises_connection_failed(bad_dsn) -> None:
    dsn, expected = bad_dsn
    with pytest.raises(ConnectionFailed) as raised:
        openqueue_py.install(dsn)
    _one_connection_failure(raised.value, expected)


def test_a_client_can_try_again_after_connection_failed(pg_server, dsn) -> None:
    with Client(make_conninfo(dsn, port=_free_port(), host="127.0.0.1")) as broken:
        with pytest.raises(ConnectionFailed):
            broken.stats()
        with pytest.raises(ConnectionFailed):  # tried again, not a pool left half open
            broken.stats()
    with Client(dsn) as good:
        assert good.stats() == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a host that hangs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_a_silent_server_is_given_up_after_the_default_connect_timeout(pg_server, silent_port) -> None:
    dsn = make_conninfo(pg_server.admin_dsn, host="127.0.0.1", port=silent_port)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="timeout") as raised, Client(dsn) as client:
        client.stats()
    elapsed = time.monotonic() - started
    assert DEFAULT_CONNECT_TIMEOUT - 1 < elapsed < DEFAULT_CONNECT_TIMEOUT + 2, f"{elapsed:.2f} s"
    assert "\n" not in str(raised.value)


def test_a_connect_timeout_in_the_dsn_wins(pg_server, silent_port) -> None:
    dsn = make_conninfo(pg_server.admin_dsn, host="127.0.0.1", port=silent_port, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="timeout"), Client(dsn) as client:
        client.stats()
    assert 1.5 < time.monotonic() - started < DEFAULT_CONNECT_TIMEOUT - 1


def test_a_malformed_dsn_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="DSN is not valid"):
        Client("this is not a DSN")


# -- the command line ------------------------------------------------------------------

COMMANDS = {
    "install": ["install"],
    "enqueue": ["enqueue", "--queue", "q"],
    "stats": ["stats"],
    "reap": ["reap"],
    "purge": ["purge", "--older-than", "60"],
    "cancel": ["cancel", "1"],
    "replay": ["replay", "1"],
    "worker": ["worker", "--queue", "q=json:dumps"],
}


def _cli(*args: str, dsn: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [str(OPENQUEUE), *args, "--dsn", dsn], capture_output=True, text=True, timeout=60, check=False
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_says_a_missing_database_in_one_line_quickly(command, pg_server) -> None:
    dsn = make_conninfo(pg_server.admin_dsn, dbname="oq_no_such_db")
    done, elapsed = _cli(*COMMANDS[command], dsn=dsn)
    assert done.returncode == EXIT_CANNOT_CONNECT, done.stderr
    assert elapsed < CLI_QUICK, f"{elapsed:.2f} s"
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("openqueue: cannot connect to PostgreSQL: ")
    assert '"oq_no_such_db" does not exist' in line


@pytest.mark.parametrize("command", ["stats", "install", "worker"])
def test_the_cli_says_each_bad_dsn_in_one_line_quickly(command, bad_dsn) -> None:
    dsn, expected = bad_dsn
    done, elapsed = _cli(*COMMANDS[command], dsn=dsn)
    assert done.returncode == EXIT_CANNOT_CONNECT, done.stderr
    assert elapsed < CLI_QUICK, f"{elapsed:.2f} s"
    (line,) = done.stderr.splitlines()
    assert line.startswith("openqueue: cannot connect to PostgreSQL: ") and expected in line


def test_verbose_shows_the_full_detail(pg_server) -> None:
    dsn = make_conninfo(pg_server.admin_dsn, host="127.0.0.1", port=_free_port())
    done = subprocess.run(
        [str(OPENQUEUE), "--verbose", "stats", "--dsn", dsn], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_CANNOT_CONNECT
    lines = done.stderr.splitlines()
    assert lines[0].startswith("openqueue: cannot connect to PostgreSQL: ")
    assert "Is the server running" in done.stderr  # libpq's whole message, hint included
    assert "Traceback" in done.stderr and len(lines) > 5


def test_a_malformed_dsn_is_one_line_too() -> None:
    done, _ = _cli("stats", dsn="this is not a DSN")
    assert done.returncode == EXIT_USAGE  # a bad option
    (line,) = done.stderr.splitlines()
    assert line.startswith("openqueue: the DSN is not valid")


# -- a database without OpenQueue -------------------------------------------------------


def test_client_calls_on_a_database_without_openqueue_raise_not_installed(empty_dsn) -> None:
    with Client(empty_dsn) as client:
        for call in (
            lambda: client.enqueue("q", {}),
            lambda: client.lease("q", "w"),
            lambda: client.ack(1, uuid.uuid4()),
            client.stats,
            client.reap,
        ):
            with pytest.raises(NotInstalled) as raised:
                call()
            assert str(raised.value) == NOT_INSTALLED_MESSAGE
            assert isinstance(raised.value.__cause__, psycopg.errors.InvalidSchemaName)
        with pytest.raises(NotInstalled, match="run `openqueue install`"):
            client.get_job(1)  # a view, not a function: 42P01
        # Still usable: installing fixes it.
        client.install()
        assert client.stats() == []


def test_async_client_on_a_database_without_openqueue_raises_not_installed(empty_dsn) -> None:
    async def scenario() -> None:
        async with AsyncClient(empty_dsn) as client:
            with pytest.raises(NotInstalled, match="run `openqueue install`"):
                await client.enqueue("q", {})

    asyncio.run(scenario())


def test_not_installed_inside_the_callers_transaction(empty_dsn) -> None:
    with psycopg.connect(empty_dsn) as conn, pytest.raises(NotInstalled):
        Client(conn).enqueue("q", {}, conn=conn)


def test_an_older_schema_without_a_function_raises_not_installed(empty_dsn) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("create schema openqueue")  # the schema, but none of what this package calls
    with Client(empty_dsn) as client, pytest.raises(NotInstalled, match="older version") as raised:
        client.stats()
    assert "openqueue.oq_stats() does not exist" in str(raised.value)


@pytest.mark.parametrize("command", ["stats", "enqueue", "reap", "cancel", "worker"])
def test_the_cli_says_run_openqueue_install(command, empty_dsn) -> None:
    done, elapsed = _cli(*COMMANDS[command], dsn=empty_dsn)
    assert done.returncode == EXIT_NOT_INSTALLED, done.stderr
    assert done.stderr == f"openqueue: {NOT_INSTALLED_MESSAGE}\n"
    assert elapsed < CLI_QUICK


def test_verbose_not_installed_shows_the_sqlstate(empty_dsn) -> None:
    done = subprocess.run(
        [str(OPENQUEUE), "-v", "stats", "--dsn", empty_dsn], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EXIT_NOT_INSTALLED
    assert done.stderr.startswith(f"openqueue: {NOT_INSTALLED_MESSAGE}\n")
    assert "SQLSTATE: 3F000" in done.stderr
    assert 'schema "openqueue" does not exist' in done.stderr


# -- a server restart --------------------------------------------------------------------


@pytest.fixture
def crashable(pg_server, dsn: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A database with OpenQueue installed, and a way to crash-restart its server."""
    if pg_server.restart is not None:
        yield dsn, pg_server.restart
        return
    with EmbeddedPostgres(settings=FAST_SETTINGS) as private:
        openqueue_py.install(private.dsn())
        yield private.dsn(), private.restart


def test_without_a_check_a_pool_hands_out_connections_a_restart_broke(crashable) -> None:
    # The control: what the client's checked pool protects against.
    dsn, restart = crashable
    with ConnectionPool(dsn, min_size=2, max_size=2, kwargs={"autocommit": True}) as pool:
        pool.wait()
        restart()
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("select 1")


def test_the_first_calls_after_a_server_restart_succeed(crashable) -> None:
    dsn, restart = crashable
    with Client(dsn, min_size=3, max_size=3) as client:
        # Three connections in the pool, all used once.
        barrier = threading.Barrier(3)

        def use() -> None:
            with client.connection() as conn:
                barrier.wait(timeout=10)
                conn.execute("select 1")

        threads = [threading.Thread(target=use) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        restart()
        # More calls than pooled connections: each broken one is found on checkout and replaced.
        ids = [client.enqueue("after_restart", {"n": n}) for n in range(6)]
        assert len(set(ids)) == 6
        assert client.stats()[0].pending == 6


def test_the_first_async_calls_after_a_server_restart_succeed(crashable) -> None:
    dsn, restart = crashable

    async def scenario() -> list[int]:
        async with AsyncClient(dsn, min_size=2, max_size=2) as client:
            await asyncio.gather(*(client.stats() for _ in range(4)))
            await asyncio.to_thread(restart)
            return [await client.enqueue("after_restart", {}) for _ in range(4)]

    assert len(set(asyncio.run(scenario()))) == 4


# -- which calls are safe to retry --------------------------------------------------------


def test_retrying_an_enqueue_with_its_idempotency_key_gives_the_same_job(client) -> None:
    first = client.enqueue("retry", {"n": 1}, idempotency_key="order-7")
    again = client.enqueue("retry", {"n": 1}, idempotency_key="order-7")
    assert again == first
    assert client.stats()[0].pending == 1


def test_retrying_ack_nack_heartbeat_after_a_lost_reply_changes_nothing(client) -> None:
    client.enqueue_batch("retry", [{}, {}])
    acked, nacked = client.lease_many("retry", "w", batch_size=2)
    assert client.ack(acked.job.id, acked.lease_token, {"ok": 1}) is True
    assert client.ack(acked.job.id, acked.lease_token, {"ok": 2}) is False  # the retry: no effect
    assert client.get_job(acked.job.id).result == {"ok": 1}
    assert client.heartbeat(acked.job.id, acked.lease_token) is None
    assert client.nack(nacked.job.id, nacked.lease_token, "boom") is not None
    assert client.nack(nacked.job.id, nacked.lease_token, "boom") is None
    assert len(client.get_job(nacked.job.id).errors) == 1
