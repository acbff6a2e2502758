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


def _psql_session() -> list[str]:
    """The statements of the README's psql session, in order."""
    session = re.search(r"## The SQL API, from psql\n\n```text\n(.*?)```", README.read_text(), re.S)
    assert session, "README.md has no psql session"
    statements, current = [], ""
    for line in session[1].splitlines():
        if line.startswith("=# "):
            current = line[3:]
        elif current and line.startswith(" "):
            current += " " + line.strip()
        else:
            continue
        if current.endswith(";"):
            statements.append(current)
            current = ""
    return statements


def test_readme_psql_session_runs_in_psql(psql) -> None:
    enqueue, lease, ack, stats = _psql_session()
    assert psql(enqueue).stdout.strip() == "1"
    job_id, payload, attempts, token = psql(lease).stdout.strip().split("|")
    assert (job_id, payload, attempts) == ("1", '{"to": "ada@example.com"}', "1")
    shown_token = re.search(r"lease_token => '([0-9a-f-]+)'", ack)[1]
    assert psql(ack.replace(shown_token, token)).stdout.strip() == "t"
    assert psql(stats).stdout.strip() == "emails|0|0|1"


def _flow_control_sql() -> list[str]:
    """The statements of the README's "Flow control" SQL example, in order."""
    section = re.search(r"## Flow control\n.*?```sql\n(.*?)```", README.read_text(), re.S)
    assert section, "README.md has no Flow control SQL example"
    return [line for line in section[1].splitlines() if line.startswith("select")]


def test_readme_flow_control_sql_runs_in_psql(psql, conn) -> None:
    pause, show, resume, limit, unlimit = _flow_control_sql()
    assert psql(pause).stdout.strip() == "t"
    assert psql(show).stdout.strip() == "emails|0|t"
    assert psql(resume).stdout.strip() == "t"
    psql(limit)
    assert conn.execute(
        "select max_running, rate_limit from openqueue.queues where queue_name = 'emails'"
    ).fetchone() == (5, 100)
    psql(unlimit)
    assert conn.execute(
        "select max_running, rate_limit from openqueue.queues where queue_name = 'emails'"
    ).fetchone() == (None, None)
