"""Chaos runs print their summary in the terminal summary, so `make test` shows the figures too."""

from __future__ import annotations

import pytest

SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("chaos")
        for text in SUMMARIES:
            terminalreporter.write_line(text)
