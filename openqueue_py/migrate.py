"""Install and upgrade the OpenQueue schema.

The single source of truth is ``sql/migrations/NNNN_name.sql``. From it,
:func:`render_installer` builds ``sql/openqueue.sql``: one transaction that
takes an advisory lock, reads the applied version from
``openqueue.schema_migrations`` and runs only the missing migrations. ``psql -f
sql/openqueue.sql``, :func:`install` and ``openqueue install`` all run that same
file, so there is exactly one install path.

``make sql`` (:func:`main`) rewrites ``sql/openqueue.sql`` after a
migration is added; a test fails when it is out of date.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ._connect import ConnectionSource, connection_from
from .errors import SQLSTATE_ERRORS, InvalidArgument

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Any constant works; it only has to be the same for every installer.
INSTALL_LOCK_KEY = "openqueue.install"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _sql_dir() -> Path:
    """openqueue_py/sql of an installed package, or sql/ of a source checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "sql"
    if (installed / "openqueue.sql").is_file():
        return installed
    return package.parent / "sql"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in version order; refuses gaps and ill-named files."""
    directory = directory or _sql_dir() / "migrations"
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), path.stem, path.read_text()))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {migration.name} found where version {expected} belongs")
    return migrations


# After the last migration, on every run: roles, ownership, SECURITY DEFINER
# and grants (schema version 3 and later). Idempotent, so a re-run leaves the
# same ACLs; it also covers objects a later migration adds, and roles created
# by hand after the first install.
_SECURITY_STEP = (
    "    if to_regprocedure('openqueue._apply_security()') is not null then\n"
    "        perform openqueue._apply_security();\n"
    "    end if;\n"
)


def render_installer(migrations: list[Migration]) -> str:
    """The text of sql/openqueue.sql for these migrations."""
    latest = migrations[-1].version
    steps = []
    for m in migrations:
        tag = f"$oq_{m.version:04d}$"
        if tag in m.sql:
            raise ValueError(f"migration {m.name} contains the reserved quote tag {tag}")
        steps.append(
            f"    if v_current < {m.version} then\n"
            f"        execute {tag}\n{m.sql.rstrip()}\n{tag};\n"
            f"        insert into openqueue.schema_migrations (version, name)\n"
            f"        values ({m.version}, '{m.name}');\n"
            f"        raise notice 'openqueue: applied migration {m.name}';\n"
            f"    end if;\n"
        )
    return (
        "-- OpenQueue installer and upgrader.\n"
        "-- GENERATED from sql/migrations/ by `make sql`: do not edit by hand.\n"
        "--\n"
        '--   psql "$DSN" -v ON_ERROR_STOP=1 -f sql/openqueue.sql\n'
        "--\n"
        "-- Installs the current schema into an empty database or upgrades an\n"
        "-- earlier version in place: every missing migration runs, in order, in\n"
        "-- one transaction, under an advisory lock so that concurrent installers\n"
        "-- queue up instead of colliding. Running it again changes nothing.\n"
        "begin;\n\n"
        "-- Nothing the installing session has planted in its search_path is seen\n"
        "-- by the migrations (every reference in them is schema-qualified).\n"
        "set local search_path = pg_catalog, pg_temp;\n\n"
        "do $oq_lock$\n"
        "begin\n"
        f"    perform pg_advisory_xact_lock(hashtextextended('{INSTALL_LOCK_KEY}', 0));\n"
        "end\n"
        "$oq_lock$;\n\n"
        "do $oq_install$\n"
        "declare\n"
        "    v_current integer := 0;\n"
        "begin\n"
        "    if to_regclass('openqueue.schema_migrations') is not null then\n"
        "        select coalesce(max(version), 0) into v_current\n"
        "        from openqueue.schema_migrations;\n"
        "    end if;\n"
        f"    if v_current > {latest} then\n"
        "        raise exception using\n"
        "            errcode = 'OQ001',\n"
        f"            message = format('openqueue schema version %s is newer than this "
        f"installer (version {latest})', v_current),\n"
        "            hint = 'install a newer OpenQueue release';\n"
        "    end if;\n" + "".join(steps) + _SECURITY_STEP + "end\n"
        "$oq_install$;\n\n"
        "commit;\n"
    )


def installer_sql() -> str:
    """The text of sql/openqueue.sql as shipped."""
    return (_sql_dir() / "openqueue.sql").read_text()


def latest_version() -> int:
    return load_migrations()[-1].version


def install(conninfo_or_connection: ConnectionSource) -> None:
    """Install or upgrade the schema: exactly what ``psql -f sql/openqueue.sql`` does.

    Takes a DSN or an open connection that is not inside a transaction (the
    installer runs its own). Safe to run from several processes at once.
    """
    with connection_from(conninfo_or_connection, autocommit=True) as conn:
        if not conn.autocommit:
            raise InvalidArgument("install() needs a connection that is not inside a transaction")
        try:
            with _mapped_errors():
                conn.execute(installer_sql().encode())
        finally:
            # A failed run leaves the installer's own BEGIN open (aborted):
            # end it, so that the caller's connection is usable again.
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()


async def install_async(conn: psycopg.AsyncConnection) -> None:
    """:func:`install` for an open asyncio connection outside a transaction."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise InvalidArgument("install() needs a connection that is not inside a transaction")
    previous = conn.autocommit
    await conn.set_autocommit(True)
    try:
        with _mapped_errors():
            await conn.execute(installer_sql().encode())
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()  # the installer's own BEGIN, left open by a failure
        await conn.set_autocommit(previous)


@contextmanager
def _mapped_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        mapped = SQLSTATE_ERRORS.get(exc.sqlstate or "")
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


def installed_version(conn: psycopg.Connection) -> int:
    """The schema version a database holds (0 when OpenQueue is not installed)."""
    # Two statements: a query naming a missing table fails at parse time,
    # whatever CASE would have chosen.
    exists = conn.execute("select to_regclass('openqueue.schema_migrations') is not null").fetchone()
    if not (exists and exists[0]):
        return 0
    row = conn.execute("select coalesce(max(version), 0) from openqueue.schema_migrations").fetchone()
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> int:
    """Regenerate sql/openqueue.sql (``--check``: only report whether it is stale)."""
    args = sys.argv[1:] if argv is None else argv
    target = _sql_dir() / "openqueue.sql"
    text = render_installer(load_migrations())
    if "--check" in args:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run `make sql`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
