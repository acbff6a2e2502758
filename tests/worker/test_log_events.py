"""The README's table of worker log events matches the events the code emits."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_emitted_event_is_documented_and_every_documented_event_is_emitted() -> None:
    sources = sorted((REPO / "openqueue_py" / "worker").glob("*.py"))
    assert sources, "the openqueue_py/worker package is missing"
    emitted = {
        event for path in sources for event in re.findall(r'"((?:worker|job)\.[a-z_]+)"', path.read_text())
    }
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `((?:worker|job)\.[a-z_]+)` \|", readme, re.M))
    assert emitted, "no events found in openqueue_py/worker/"
    assert emitted == documented, {"undocumented": emitted - documented, "stale": documented - emitted}
