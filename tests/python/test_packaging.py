"""The SQL ships inside the package: an installed openqueue_py finds it without the checkout.

The wheel layout is rebuilt from pyproject.toml's own package-dir and
package-data settings (no build, no network), then imported from a clean
directory in a fresh interpreter.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _lay_out_package(target: Path) -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in config["packages"]:
        source = REPO / config["package-dir"][package]
        destination = target.joinpath(*package.split("."))
        destination.mkdir(parents=True, exist_ok=True)
        patterns = ["*.py", *config["package-data"].get(package, [])]
        for path in source.iterdir():
            if path.is_file() and any(fnmatch.fnmatch(path.name, p) for p in patterns):
                shutil.copy2(path, destination / path.name)


def test_installed_layout_finds_installer_and_migrations(tmp_path: Path) -> None:
    _lay_out_package(tmp_path)
    assert (tmp_path / "openqueue_py" / "sql" / "openqueue.sql").is_file()
    assert (tmp_path / "openqueue_py" / "sql" / "migrations" / "0001_init.sql").is_file()
    script = (
        "import openqueue_py, openqueue_py.migrate as m;"
        f"assert openqueue_py.__file__.startswith({str(tmp_path)!r}), openqueue_py.__file__;"
        "assert m.installer_sql() == m.render_installer(m.load_migrations());"
        "print(m.latest_version())"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); {script}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(list((REPO / "sql" / "migrations").glob("*.sql"))))
