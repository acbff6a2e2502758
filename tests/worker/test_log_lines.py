"""A worker in a program that configured no logging still prints readable lines."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import psycopg

from openqueue_py.worker.logging import LogFormatter, message

from .conftest import REPO

# A program with no logging set up: Python's last-resort handler prints
# WARNING and above to stderr with the bare message.
PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    import psycopg
    from openqueue_py import Client, Fail, Worker

    dsn = sys.argv[1]

    def send_email(job):
        raise Fail("mailbox unavailable")

    client = Client(dsn)
    job_id = client.enqueue("send_email", {"to": "user@example.com"})
    worker = Worker(dsn, {"send_email": send_email}, concurrency=1, poll_interval=0.2, handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 60
    while client.get_job(job_id).status != "dead" and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join(60)
    client.close()
    print(job_id)
    """
)


def test_a_worker_without_logging_configured_prints_the_event_and_its_fields(
    dsn: str, conn: psycopg.Connection
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, dsn], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.strip())
    assert conn.execute("select status from openqueue.jobs where id = %s", (job_id,)).fetchone() == ("dead",)
    lines = [line for line in done.stderr.splitlines() if line.startswith("job.dead ")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("job.dead worker_id=")
    for pair in (f"job_id={job_id}", "queue=send_email", "attempt=1", "outcome=dead"):
        assert f" {pair}" in lines[0], lines[0]
    assert "error=" in lines[0] and "mailbox unavailable" in lines[0]


def test_the_message_carries_the_fields_and_the_formatter_does_not_repeat_them() -> None:
    fields = {"job_id": 3, "queue": "send_email", "attempt": 5, "error": "Fail: no mailbox"}
    text = message("job.dead", fields)
    assert text == "job.dead job_id=3 queue=send_email attempt=5 error='Fail: no mailbox'"
    assert message("worker.stopping", {}) == "worker.stopping"
    record = logging.LogRecord("openqueue.worker", logging.ERROR, __file__, 1, text, None, None)
    record.job_id = 3
    formatted = LogFormatter().format(record)
    assert formatted.endswith(" ERROR openqueue.worker " + text)
    assert formatted.count("job_id=") == 1
