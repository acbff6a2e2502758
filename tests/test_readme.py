"""Every Python example in README.md runs as written."""

from __future__ import annotations

import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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


def _command_line_block() -> list[str]:
    """The lines of the README's "The command line" block, comments stripped."""
    block = re.search(r"## The command line\n.*?```sh\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no command-line block"
    return [line.split("  #")[0].strip() for line in block[1].splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _dashboard_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            return page.status == 200 and "send_email" in page.read().decode()
    except OSError:
        return False


def test_readme_command_line_block_runs(dsn: str, conn: psycopg.Connection) -> None:
    """Every line of the README's command-line block runs as written, in order, against
    a test database; the worker and the dashboard, which run until stopped, are started,
    seen working, and stopped with SIGTERM."""
    lines = _command_line_block()
    assert [shlex.split(line)[1] for line in lines] == [
        "install", "enqueue", "stats", "jobs", "jobs", "dead", "dead", "purge", "worker", "dashboard",
    ]  # fmt: skip
    openqueue = str(Path(sys.executable).with_name("openqueue"))
    for line in lines:
        argv = [openqueue if word == "openqueue" else word for word in shlex.split(line.replace("$DSN", dsn))]
        if argv[1] == "worker":
            with subprocess.Popen(argv, cwd=README.parent, stderr=subprocess.PIPE, text=True) as worker:
                try:
                    _wait_for(
                        lambda: (
                            conn.execute("select status from openqueue.jobs where id = 1").fetchone()
                            == ("completed",)
                        ),
                        "the worker to complete job 1",
                    )
                finally:
                    worker.send_signal(signal.SIGTERM)
                    _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
        elif argv[1] == "dashboard":
            port = _free_port()
            argv[argv.index("--port") + 1] = str(port)
            with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as dashboard:
                try:
                    _wait_for(lambda port=port: _dashboard_answers(port), "the dashboard to answer")
                finally:
                    dashboard.send_signal(signal.SIGTERM)
                    dashboard.communicate(timeout=60)
        else:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            if argv[1] == "enqueue":
                assert done.stdout.strip() == "1"
            if argv[1:3] == ["jobs", "show"]:
                assert "ada@example.com" in done.stdout


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
