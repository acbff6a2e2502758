"""Upgrading from every earlier schema version ends with the same catalog as a
fresh install: functions (with their SECURITY DEFINER flag, search_path and
ACLs), relations (with their ACLs), columns, constraints and triggers."""

from __future__ import annotations

import pytest
from test_install import catalog, make_empty_db, run_psql  # noqa: F401  (tests/ is on sys.path)

from openqueue_py.migrate import load_migrations, render_installer


@pytest.mark.parametrize("version", range(1, len(load_migrations())))
def test_an_upgrade_from_every_earlier_version_matches_a_fresh_install(
    pg_server,
    make_empty_db,  # noqa: F811 (the fixture imported above)
    tmp_path,
    version,
):
    fresh = make_empty_db()
    assert run_psql(pg_server, fresh).returncode == 0

    old = make_empty_db()
    installer = tmp_path / f"openqueue_v{version}.sql"
    installer.write_text(render_installer(load_migrations()[:version]))
    first = run_psql(pg_server, old, installer)
    assert first.returncode == 0, first.stderr
    upgrade = run_psql(pg_server, old)
    assert upgrade.returncode == 0, upgrade.stderr

    expected, got = catalog(fresh, identity=False), catalog(old, identity=False)
    assert got.keys() == expected.keys()
    for name in expected:
        if name == "schemas":
            continue  # the databases differ in name only
        assert got[name] == expected[name], name
