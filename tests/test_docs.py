"""The documentation cannot drift from the schema.

* docs/sql-reference.md is exactly what ``python -m openqueue_py.docgen``
  renders from a fresh install's catalog (signatures, results, roles and
  ``COMMENT ON FUNCTION`` texts): a function added, changed or re-commented
  without ``make docs`` fails here.
* Every ``oq_*`` function named anywhere in README.md or docs/ exists, and
  has its reference entry; every public function has a comment.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from openqueue_py import docgen

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _catalog_names(conn: psycopg.Connection) -> set[str]:
    return {name for name, *_ in docgen.catalog(conn)}


def test_the_sql_reference_matches_the_catalog_run_make_docs_if_not(conn: psycopg.Connection) -> None:
    rendered = docgen.render(conn)
    current = docgen.TARGET.read_text() if docgen.TARGET.exists() else ""
    if current != rendered:
        stale = [
            name
            for name, arguments, result, comment, _ in docgen.catalog(conn)
            if f"openqueue.{name}({arguments})\n  returns {result}\n" not in current
            or comment.strip() not in current
        ]
        changed = stale or "layout"
        raise AssertionError(f"docs/sql-reference.md is out of date (changed: {changed}): run `make docs`")


def test_every_public_function_has_a_comment_and_a_reference_entry(conn: psycopg.Connection) -> None:
    reference = docgen.TARGET.read_text()
    functions = docgen.catalog(conn)
    assert len(functions) >= 13  # at least contract section 3
    for name, _, _, comment, _ in functions:
        assert comment.strip(), f"openqueue.{name} has no COMMENT ON FUNCTION"
        assert f"\n## {name}\n" in reference, f"docs/sql-reference.md has no entry for {name}"


def test_every_function_the_docs_name_exists_and_has_its_reference_entry(conn: psycopg.Connection) -> None:
    known = _catalog_names(conn)
    reference = docgen.TARGET.read_text()
    named: dict[str, set[str]] = {}
    for path in DOCS:
        for name in re.findall(r"\b(oq_[a-z][a-z0-9_]*)\b", path.read_text()):
            named.setdefault(name, set()).add(path.name)
    assert {"oq_enqueue", "oq_lease", "oq_ack", "oq_nack"} <= set(named)
    unknown = {name: sorted(files) for name, files in named.items() if name not in known}
    assert not unknown, f"documented but not in the schema: {unknown}"
    missing = sorted(name for name in named if f"\n## {name}\n" not in reference)
    assert not missing, f"named in the docs but without a reference entry: {missing} (run `make docs`)"


def test_docs_link_only_to_files_that_exist() -> None:
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name} links to a missing file: {target}"
