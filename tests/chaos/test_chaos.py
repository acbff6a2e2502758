"""A bounded chaos run: nothing lost, nothing duplicated, nothing unfinished.

20 seconds in the default suite; `make chaos` runs 60 (``CHAOS_SECONDS=300
make chaos`` for longer, ``CHAOS_SEED=n`` to replay a fault timeline). The
run, its faults and its checks are in ``driver.py`` and ``verify.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import SUMMARIES
from .driver import ChaosConfig, run_chaos

CONFIG = ChaosConfig.from_env(default_seconds=20)


@pytest.mark.slow
@pytest.mark.timeout(int(CONFIG.seconds + CONFIG.drain_timeout + 300))
def test_chaos_run_loses_duplicates_and_leaves_unfinished_nothing(tmp_path: Path) -> None:
    report = run_chaos(CONFIG, tmp_path)
    SUMMARIES.append(report.text)
    print(report.text)
    assert not report.violations, report.text
