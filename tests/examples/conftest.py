"""The examples in examples/ run against the test database.

This directory has no ``__init__.py`` on purpose: as a package it would be
named ``examples`` and hide the repository's ``examples/``, which the tests
import from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from worker.conftest import events  # noqa: E402, F401 - the worker tests' log capture fixture
