"""A Citus cluster (coordinator + 2 workers) for the scale-out tests.

Runs only when asked (``OPENQUEUE_TEST_BACKEND=citus`` or ``make test-citus``):
the first run builds Citus into ``.cache/citus/`` (about a minute), later runs
start the cluster in about 3 seconds (on the Citus backend, the session's cluster
is the one tests/conftest.py started for the contract suite). One database for the session, with
OpenQueue installed on the coordinator and ``oq_distribute()`` run; tests
use queue names of their own, so they need no cleanup between them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import psycopg
import pytest

# The worker tests' fixture, for the worker tests run on the cluster here.
from worker.conftest import events  # noqa: F401

import openqueue_py

from .cluster import Cluster, start_cluster

DATABASE = "oq_citus"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("OPENQUEUE_TEST_BACKEND") == "citus":
        return
    skip = pytest.mark.skip(reason="Citus tests: run with OPENQUEUE_TEST_BACKEND=citus (make test-citus)")
    for item in items:
        if "tests/citus/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def install_distributed(cluster: Cluster, database: str = DATABASE) -> None:
    """The database on every node, OpenQueue installed on the coordinator and oq_distribute() run."""
    cluster.setup_database(database)
    openqueue_py.install(cluster.dsn(database))
    with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
        conn.execute("select openqueue.oq_distribute()")


@pytest.fixture(scope="session")
def citus_cluster(pg_server) -> Iterator[Cluster]:
    """The session's cluster: the Citus backend's own (tests/conftest.py), so that one session runs
    these tests and the contract suite on one cluster; a cluster of its own otherwise."""
    own = pg_server.kind != "citus"
    cluster = start_cluster() if own else pg_server.cluster
    try:
        cluster.drop_database(DATABASE)
        install_distributed(cluster)
        yield cluster
    finally:
        if own:
            cluster.stop()
        else:
            cluster.drop_database(DATABASE)


@pytest.fixture
def citus_dsn(citus_cluster: Cluster) -> str:
    return citus_cluster.dsn(DATABASE)


class RemoteLog:
    """The commands the coordinator sends to other nodes (citus.log_remote_commands)."""

    _DETAIL = re.compile(r"on server \S+@[\d.]+:(\d+) connectionId")

    def __init__(self, conn: psycopg.Connection) -> None:
        self.entries: list[tuple[int, str]] = []
        conn.execute("set citus.log_remote_commands = on")
        conn.execute("set client_min_messages = log")
        conn.add_notice_handler(self._notice)

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        match = self._DETAIL.search(diagnostic.message_detail or "")
        if message.startswith("issuing ") and match:
            self.entries.append((int(match[1]), message.removeprefix("issuing ")))

    def clear(self) -> None:
        self.entries.clear()


@pytest.fixture
def remote_log(citus_dsn: str) -> Iterator[tuple[psycopg.Connection, RemoteLog]]:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        yield conn, RemoteLog(conn)
