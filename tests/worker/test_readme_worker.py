"""README examples that start a worker (tests/test_readme.py skips those that block)."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from openqueue_py import Client, Worker

from .conftest import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def _worker_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if README.exists() else []
    return [b for b in blocks if "worker.run()" in b and "AsyncWorker(" not in b]


@pytest.mark.parametrize(
    "index",
    range(len(_worker_blocks()))
    or [pytest.param(0, marks=pytest.mark.skip(reason="README.md has no blocking Worker example"))],
)
def test_readme_worker_example_runs_until_stopped(index: int, dsn: str, client: Client) -> None:
    block = _worker_blocks()[index]
    namespace: dict[str, Any] = {"dsn": dsn}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            exec(compile(block, f"README.md worker block {index}", "exec"), namespace)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        worker = wait_until(
            lambda: next((v for v in list(namespace.values()) if isinstance(v, Worker)), None) or errors,
            timeout=30,
            what="the example's Worker",
        )
        assert not errors, errors
        ids = [client.enqueue(queue, {"queue": queue, "to": "ada@example.com"}) for queue in worker.queues]
        wait_until(
            lambda: all(client.get_job(i).status == "completed" for i in ids) or errors,
            timeout=30,
            what="the jobs",
        )
    finally:
        for value in list(namespace.values()):
            if isinstance(value, Worker):
                value.stop()
        thread.join(30)
    assert not errors, errors
    assert not thread.is_alive()


def _cli_worker_command() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    commands = [line for b in blocks for line in b.splitlines() if line.startswith("openqueue worker ")]
    assert commands, "README.md shows no `openqueue worker` command"
    return commands[0]


def test_readme_cli_worker_example_runs_as_written(dsn: str, client: Client) -> None:
    command = _cli_worker_command()
    argv = shlex.split(command.replace('"$DSN"', shlex.quote(dsn)))
    argv[0] = str(Path(sys.executable).with_name("openqueue"))
    process = subprocess.Popen(
        argv, cwd=README.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        good = client.enqueue("send_email", {"to": "ada@example.com"})
        bad = client.enqueue("send_email", {"to": "nobody"})
        wait_until(
            lambda: client.get_job(good).status == "completed" and client.get_job(bad).status == "dead",
            timeout=60,
            what="the README CLI worker to process both jobs",
        )
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert client.get_job(good).result == {"sent_to": "ada@example.com"}
