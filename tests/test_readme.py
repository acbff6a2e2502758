"""Every Python example in README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    """The README's Python examples, less the worker ones (they block until stopped:
    tests/worker/test_readme_worker.py runs those)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if "worker.run()" not in b]


def test_readme_has_python_examples() -> None:
    assert len(_python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index: int, dsn: str, conn: psycopg.Connection) -> None:
    block = _python_blocks()[index]
    conn.execute("create table orders (id bigint primary key)")
    sent: list[object] = []
    namespace = {"dsn": dsn, "send_email": sent.append, "psycopg": psycopg}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    client = namespace.get("client")
    if "send_email(" in block:
        assert sent == [{"to": "user@example.com"}]
        assert conn.execute("select status from openqueue.jobs").fetchall() == [("completed",)]
    if "send_receipt" in block:
        assert conn.execute("select id from orders").fetchall() == [(42,)]
        rows = conn.execute("select payload from openqueue.jobs where queue_name = 'send_receipt'").fetchall()
        assert rows == [({"order": 42},)]
    if client is not None:
        client.close()
