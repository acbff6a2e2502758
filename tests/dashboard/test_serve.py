"""openqueue_py.dashboard.serve: what `openqueue dashboard` runs."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from openqueue_py.dashboard import serve
from openqueue_py.errors import NotInstalled

from .conftest import wait_until

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_refuses_a_database_without_the_schema_before_listening(empty_dsn: str) -> None:
    with pytest.raises(NotInstalled):
        serve(empty_dsn, port=_free_port())


def test_serve_listens_on_127_0_0_1_and_answers(dsn: str) -> None:
    port = _free_port()
    script = f"from openqueue_py.dashboard import serve; serve({dsn!r}, port={port})"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    def get(path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    try:
        assert wait_until(lambda: get("/"), what="the dashboard to answer") == 200
        assert get("/metrics") == 200
        # Read-only by default.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/jobs/1/replay", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
        # Bound to the loopback address only.
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if listening.returncode == 0:
            assert f"127.0.0.1:{port}" in listening.stdout, listening.stdout
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode is not None, output
