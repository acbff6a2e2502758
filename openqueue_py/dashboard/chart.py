"""The throughput chart: inline SVG drawn on the server, no script."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from .queries import Minute

WIDTH = 760
HEIGHT = 200
LEFT = 44  # room for the y labels
RIGHT = 8
TOP = 12
BOTTOM = 26  # room for the x labels


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is >= value (at least 1)."""
    if value <= 1:
        return 1
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return step * scale
        scale *= 10


def throughput_svg(minutes: Sequence[Minute]) -> str:
    """Completed jobs (bars) and failed attempts (red bars in front) per minute, oldest on the left."""
    n = max(len(minutes), 1)
    top_value = _nice_max(max((max(m.completed, m.failures) for m in minutes), default=0))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / n
    bar = max(slot * 0.72, 1.0)

    def y(value: int) -> float:
        return TOP + plot_h - plot_h * value / top_value

    total_done = sum(m.completed for m in minutes)
    total_failed = sum(m.failures for m in minutes)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="Last {n} minutes: {total_done} jobs completed, {total_failed} attempts failed">'
    ]
    # Grid and y labels: 0, half, top.
    for value in (0, top_value // 2 if top_value >= 2 else None, top_value):
        if value is None:
            continue
        gy = y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        parts.append(f'<text class="ylabel" x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{value}</text>')
    for i, minute in enumerate(minutes):
        x = LEFT + i * slot + (slot - bar) / 2
        when = minute.start.strftime("%H:%M")
        title = escape(f"{when}: {minute.completed} completed, {minute.failures} failed")
        if minute.completed:
            parts.append(
                f'<rect class="bar-done" x="{x:.1f}" y="{y(minute.completed):.1f}" width="{bar:.1f}" '
                f'height="{TOP + plot_h - y(minute.completed):.1f}"><title>{title}</title></rect>'
            )
        if minute.failures:
            fw = bar * 0.55
            parts.append(
                f'<rect class="bar-failed" x="{x + (bar - fw) / 2:.1f}" y="{y(minute.failures):.1f}" '
                f'width="{fw:.1f}" height="{TOP + plot_h - y(minute.failures):.1f}">'
                f"<title>{title}</title></rect>"
            )
    # x labels: the start of the hour shown, every quarter hour, and now.
    parts.append(f'<text class="xlabel" x="{LEFT}" y="{HEIGHT - 8}" text-anchor="start">-{n} min</text>')
    for ago in (45, 30, 15):
        if ago < n - 5:
            x = LEFT + (n - 1 - ago) * slot + slot / 2
            parts.append(
                f'<text class="xlabel" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">-{ago} min</text>'
            )
    parts.append(f'<text class="xlabel" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">now</text>')
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)
