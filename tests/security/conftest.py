"""Login roles for the security tests: one per OpenQueue role, made for each test.

Roles are cluster-wide, so their names carry the pid and a counter (several
sessions may share a server), and they are dropped after the test.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

OPENQUEUE_ROLES = ("openqueue_producer", "openqueue_worker", "openqueue_admin")
PASSWORD = "openqueue-test"

_counter = itertools.count()


@dataclass(frozen=True)
class Login:
    """A LOGIN role holding exactly one OpenQueue role (or none)."""

    name: str
    member_of: str | None
    dsn: str

    def connect(self, **kwargs: object) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, **kwargs)


def create_login(admin_dsn: str, database_dsn: str, member_of: str | None, label: str) -> Login:
    name = f"oq_sec_{os.getpid()}_{next(_counter)}_{label}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f"create role {name} login password '{PASSWORD}'")
        if member_of:
            admin.execute(f"grant {member_of} to {name}")
    return Login(name, member_of, make_conninfo(database_dsn, user=name, password=PASSWORD))


def drop_login(admin_dsn: str, login: Login) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (login.name,)
        )
        admin.execute(f"drop role if exists {login.name}")


@pytest.fixture
def logins(pg_server, dsn) -> Iterator[dict[str, Login]]:
    """'producer', 'worker', 'admin' (each holding that OpenQueue role), 'worker2', and 'nobody'."""
    wanted = {
        "producer": "openqueue_producer",
        "worker": "openqueue_worker",
        "worker2": "openqueue_worker",
        "admin": "openqueue_admin",
        "nobody": None,
    }
    made: dict[str, Login] = {}
    try:
        for label, role in wanted.items():
            made[label] = create_login(pg_server.admin_dsn, dsn, role, label)
        yield made
    finally:
        for login in made.values():
            drop_login(pg_server.admin_dsn, login)
