"""The README's table of worker log events matches the events the code emits."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_emitted_event_is_documented_and_every_documented_event_is_emitted() -> None:
    source = (REPO / "openqueue_py" / "worker.py").read_text()
    emitted = set(re.findall(r'"((?:worker|job)\.[a-z_]+)"', source))
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `((?:worker|job)\.[a-z_]+)` \|", readme, re.M))
    assert emitted, "no events found in worker.py"
    assert emitted == documented, {"undocumented": emitted - documented, "stale": documented - emitted}
