"""README examples that start a worker (tests/test_readme.py skips those that block)."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from openqueue_py import Client, Job, Worker

from .conftest import wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def _worker_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if README.exists() else []
    return [b for b in blocks if "Worker(" in b and "worker.stop()" not in b and "AsyncWorker(" not in b]


@pytest.mark.parametrize(
    "index",
    range(len(_worker_blocks()))
    or [pytest.param(0, marks=pytest.mark.skip(reason="README.md has no blocking Worker example"))],
)
def test_readme_worker_example_runs_until_stopped(index: int, dsn: str, client: Client) -> None:
    block = _worker_blocks()[index]
    handled: list[Any] = []

    def handle(job: Job) -> None:
        handled.append(job.payload)

    namespace: dict[str, Any] = {"dsn": dsn, "handle": handle, "send_email": handle}
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
        for queue in worker.queues:
            client.enqueue(queue, {"queue": queue})
        wait_until(lambda: len(handled) >= len(worker.queues) or errors, timeout=30, what="the jobs")
    finally:
        for value in list(namespace.values()):
            if isinstance(value, Worker):
                value.stop()
        thread.join(30)
    assert not errors, errors
    assert not thread.is_alive()
