"""Report a figure: print its table, append dated rows to bench/RESULTS.md under the figure's section."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import REPO, machine, server_settings

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
COLUMNS = ("figure", "OpenQueue", "yardstick", "ratio", "target", "result")
NA = "n/a (not installed)"


@dataclass(frozen=True)
class Row:
    """One line of a figure's table; ``passed`` None means informational (no target)."""

    figure: str
    openqueue: str
    yardstick: str = "-"
    ratio: str = "-"
    target: str = "-"
    passed: bool | None = None

    @property
    def result(self) -> str:
        if self.passed is None:
            return "info" if self.openqueue != NA else "n/a"
        return "PASS" if self.passed else "FAIL"

    def cells(self) -> tuple[str, ...]:
        return (self.figure, self.openqueue, self.yardstick, self.ratio, self.target, self.result)


def ratio(value: float, yardstick: float) -> float:
    return value / yardstick if yardstick else float("inf")


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} jobs/s"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", ".", ":!bench/RESULTS.md", ":!bench/out")
    return commit + ("-dirty" if dirty else "")


def load() -> str:
    """The 1-minute load average: how busy the shared machine was (2 cores here)."""
    try:
        return f", load {Path('/proc/loadavg').read_text().split()[0]}"
    except OSError:
        return ""


def print_table(title: str, rows: Sequence[Row]) -> None:
    table = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    print(f"\n{title}")
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def report(section: str, description: str, rows: Sequence[Row], dsn: str, note: str = "") -> None:
    """Print the table and append one dated row per figure to RESULTS.md under ``## section``."""
    print_table(section, rows)
    if note:
        print(note)
    env = f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} | {git_commit()} | {machine()}{load()} | "
    env += server_settings(dsn)
    lines = [
        f"| {env} | " + " | ".join(cell.replace("|", "/") for cell in row.cells()) + " |" for row in rows
    ]
    append(section, description, lines)
    print(f"(appended to {RESULTS.relative_to(REPO)}, section '{section}')")


HEADER = (
    "| date | commit | machine | PostgreSQL | figure | OpenQueue | yardstick | ratio | target | result |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def append(section: str, description: str, lines: list[str]) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    heading = f"## {section}"
    parts = text.splitlines()
    if heading not in parts:
        block = ["", heading, "", description.strip(), "", *HEADER.splitlines(), *lines]
        RESULTS.write_text(text.rstrip("\n") + "\n" + "\n".join(block) + "\n")
        return
    start = parts.index(heading)
    end = next((i for i in range(start + 1, len(parts)) if parts[i].startswith("## ")), len(parts))
    last_row = max((i for i in range(start, end) if parts[i].startswith("|")), default=None)
    if last_row is None:  # a section without its table: add one at its end
        insert_at, lines = end, ["", *HEADER.splitlines(), *lines]
    else:
        insert_at = last_row + 1
    parts[insert_at:insert_at] = lines
    RESULTS.write_text("\n".join(parts) + "\n")
