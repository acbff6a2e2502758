"""Every Python example in README.md runs as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from openqueue_py import Client

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    """The README's Python examples, less the worker ones (they block until stopped:
    tests/worker/test_readme_worker.py runs those)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [b for b in blocks if "worker.run()" not in b]


def test_readme_has_python_examples() -> None:
    assert len(_python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_example_runs(index: int, dsn: str, conn: psycopg.Connection, capsys) -> None:
    block = _python_blocks()[index]
    conn.execute("create table orders (id bigint primary key)")
    conn.execute("create table receipts (order_id bigint)")
    sent: list[object] = []
    namespace = {"dsn": dsn, "send_email": sent.append, "psycopg": psycopg}
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    client = namespace.get("client")
    if "def send_email(" in block:  # the block defines it: it prints
        assert capsys.readouterr().out == "sending to user@example.com\n"
        assert conn.execute("select status from openqueue.jobs").fetchall() == [("completed",)]
    elif "send_email(" in block:
        assert sent == [{"to": "user@example.com"}]
        assert conn.execute("select status from openqueue.jobs").fetchall() == [("completed",)]
    if "def send_receipt(" in block:  # a handler acking in its own transaction: run it on a leased job
        with Client(dsn) as own:
            job_id = own.enqueue("send_receipt", {"order": 42})
            leased = own.lease("send_receipt", "readme")
            assert leased is not None
            namespace["send_receipt"](leased.job)
            assert own.get_job(job_id).status == "completed"
            assert own.get_job(job_id).result == {"receipt_for": 42}
            assert own.ack(job_id, leased.lease_token) is False  # acked already, by the handler
        assert conn.execute("select order_id from receipts").fetchall() == [(42,)]
    if 'client.enqueue("send_receipt"' in block:
        assert conn.execute("select id from orders").fetchall() == [(42,)]
        rows = conn.execute("select payload from openqueue.jobs where queue_name = 'send_receipt'").fetchall()
        assert rows == [({"order": 42},)]
    if client is not None:
        client.close()


def _complete(line: str) -> bool:
    """A psql input line that needs no more: a meta-command, or a statement ended by ; or \\gset."""
    return line.startswith("\\") or line.endswith(";") or line.endswith("\\gset")


def _psql_session() -> str:
    """The README's psql session as one psql script: its ``=#`` lines and their continuations."""
    session = re.search(r"## The SQL API, from psql\n\n```text\n(.*?)```", README.read_text(), re.S)
    assert session, "README.md has no psql session"
    lines: list[str] = []
    for line in session[1].splitlines():
        if line.startswith("=# "):
            lines.append(line[3:])
        elif lines and not _complete(lines[-1]) and line.startswith(" "):  # the statement goes on
            lines[-1] += " " + line.strip()
    return "\n".join(lines) + "\n"


def test_readme_psql_session_runs_in_psql(pg_server, dsn: str) -> None:
    """Typed into one psql session as shown, it prints what the README shows (the token differs)."""
    script = _psql_session()
    assert "\\gset" in script and ":'lease_token'" in script
    command = [pg_server.psql(), dsn, "-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"]
    done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    enqueued, leased, acked, stats = done.stdout.splitlines()
    assert (enqueued, acked, stats) == ("1", "t", "emails|0|0|1")
    assert re.fullmatch(r"leased job 1, attempt 1, token [0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", leased)
