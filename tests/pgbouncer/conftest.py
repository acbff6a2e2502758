"""PgBouncer in transaction pooling mode in front of the session's test server.

Debian's ``pgbouncer`` (``apt-get install pgbouncer``; ``.ci/run`` installs
it). Without the binary every test here is skipped, saying so. Each pooler
gets a generated ini and userlist in a temporary directory, listens on a free
loopback port, passes any database name through to the test server
(``* = host=...``) and trusts the server's own user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )


@dataclass(frozen=True)
class Bouncer:
    """A running pgbouncer: ``dsn(direct)`` is the same database reached through it."""

    port: int
    pool_size: int
    log: Path

    def dsn(self, direct: str) -> str:
        return make_conninfo(direct, host="127.0.0.1", port=self.port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as(server: dict[str, str]) -> list[str]:
    """pgbouncer refuses to run as root: run it as a user who can reach the server."""
    if os.geteuid() != 0:
        return []
    host = server.get("host", "")
    if host.startswith("/"):  # a Unix socket directory: its owner can reach it
        return ["-u", pwd.getpwuid(os.stat(host).st_uid).pw_name]
    return ["-u", "nobody"]


@contextmanager
def start_pgbouncer(admin_dsn: str, directory: Path, *, pool_size: int) -> Iterator[Bouncer]:
    binary = pgbouncer_binary()
    if binary is None:
        reason = "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does it)"
        if os.environ.get("OPENQUEUE_REQUIRE_PGBOUNCER"):  # set by .ci/run: CI never skips these
            pytest.fail(reason)
        pytest.skip(reason)
    server = conninfo_to_dict(admin_dsn)
    target = [f"host={server.get('host') or '127.0.0.1'}", f"port={server.get('port') or 5432}"]
    if server.get("password"):
        target.append(f"password={server['password']}")
    user = server.get("user") or "postgres"
    port = _free_port()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = {' '.join(target)}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    log = directory / "pgbouncer.log"
    with log.open("w") as out:
        process = subprocess.Popen([binary, *_run_as(server), str(ini)], stdout=out, stderr=subprocess.STDOUT)
    bouncer = Bouncer(port, pool_size, log)
    try:
        _wait_for(bouncer, process, make_conninfo(admin_dsn, user=user))
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(bouncer: Bouncer, process: subprocess.Popen, admin_dsn: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            pytest.fail(f"pgbouncer exited with {process.returncode}:\n{bouncer.log.read_text()}")
        try:
            psycopg.connect(bouncer.dsn(admin_dsn), prepare_threshold=None).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not answer within 15 s:\n{bouncer.log.read_text()}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pgbouncer(pg_server, tmp_path_factory) -> Iterator[Bouncer]:
    """One pooler for the session: three server connections per database, shared by all clients."""
    with start_pgbouncer(pg_server.admin_dsn, tmp_path_factory.mktemp("pgbouncer"), pool_size=3) as b:
        yield b


@pytest.fixture
def single_server_connection(pg_server, tmp_path) -> Iterator[Bouncer]:
    """A pooler with ONE server connection per database: whatever a client leaves there, the next finds."""
    with start_pgbouncer(pg_server.admin_dsn, tmp_path / "pgbouncer", pool_size=1) as b:
        yield b


@pytest.fixture
def pooled_dsn(pgbouncer: Bouncer, dsn: str) -> str:
    """The test's database through the session's pgbouncer."""
    return pgbouncer.dsn(dsn)
