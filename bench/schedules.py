"""Schedules: the cost of oq_cron_next and of oq_tick (issue 9, "Done when" 4).

    python -m bench.schedules [--calls 5000] [--schedules 1000]

oq_cron_next is timed in a server-side loop: one statement calls it
``--calls`` times with a different ``after`` each time (an hour apart), so
the round trip is spread over all calls; "ms per call" is the statement's
time divided by the calls. The same for the stored form oq_tick uses (the
cron expression parsed once, at oq_schedule). oq_tick is timed with
``--schedules`` schedules of which none is due (the call every worker makes
every second), and with all of them due (a new slot each time: 1,000 jobs
enqueued per call). Targets: oq_cron_next well under 1 ms for common
expressions; oq_tick with nothing due under 1 ms whatever the number of
schedules.
"""

from __future__ import annotations

import argparse
import time

import psycopg

from .common import database
from .results import Row, report

EXPRESSIONS = [
    ("*/15 * * * 1-5", "UTC"),
    ("0 2 * * *", "Europe/Berlin"),
    ("@monthly", "UTC"),
    ("* * * * *", "UTC"),
    ("30 2 * * *", "America/New_York"),
    ("0 9 * * 1", "Asia/Tokyo"),
    ("0 0 29 2 *", "UTC"),
]


def per_call_ms(conn: psycopg.Connection, sql: str, params: dict, calls: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of one statement making ``calls`` calls: ms per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        conn.execute(sql, params).fetchall()
        best = min(best, time.perf_counter() - started)
    return best * 1000 / calls


def cron_next_ms(conn: psycopg.Connection, cron: str, timezone: str, calls: int) -> tuple[float, float]:
    params = {"cron": cron, "tz": timezone, "n": calls}
    public = per_call_ms(
        conn,
        "select count(openqueue.oq_cron_next(%(cron)s, t, %(tz)s)) from generate_series(1, %(n)s) as g,"
        " lateral (select timestamptz '2024-01-01' + g * interval '1 hour') as a (t)",
        params,
        calls,
    )
    stored = per_call_ms(
        conn,
        "select count(openqueue._cron_next(p.minutes, p.hours, p.days, p.months, p.weekdays, t, %(tz)s))"
        " from openqueue._cron_parse(%(cron)s) as p, generate_series(1, %(n)s) as g,"
        " lateral (select timestamptz '2024-01-01' + g * interval '1 hour') as a (t)",
        params,
        calls,
    )
    return public, stored


def tick_costs(conn: psycopg.Connection, schedules: int) -> tuple[float, float, int]:
    conn.execute(
        "select openqueue.oq_schedule('bench-' || g, '0 3 * * *', 'bench_schedules', '{\"n\": 1}')"
        " from generate_series(1, %s) as g",
        (schedules,),
    )
    conn.execute("analyze openqueue.cron_schedules")
    # None due: every schedule's next slot is after now(); time many calls.
    calls = 200
    started = time.perf_counter()
    for _ in range(calls):
        assert conn.execute("select openqueue.oq_tick()").fetchone()[0] == 0
    idle_ms = (time.perf_counter() - started) * 1000 / calls
    # All due: a new slot each call (as_of one day further), so each call enqueues them all.
    first = conn.execute("select min(next_run_at) from openqueue.schedules").fetchone()[0]
    best, enqueued = float("inf"), 0
    for k in range(5):
        started = time.perf_counter()
        enqueued = conn.execute(
            "select openqueue.oq_tick(as_of => %s::timestamptz + %s * interval '1 day')", (first, k)
        ).fetchone()[0]
        best = min(best, time.perf_counter() - started)
        assert enqueued == schedules, enqueued
    return idle_ms, best * 1000, enqueued


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--schedules", type=int, default=1000)
    args = parser.parse_args()
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        rows = []
        for cron, timezone in EXPRESSIONS:
            public, stored = cron_next_ms(conn, cron, timezone, args.calls)
            rows.append(
                Row(
                    f"S1. oq_cron_next('{cron}', {timezone}); stored form as oq_tick uses it",
                    f"{public:.3f} ms/call; {stored:.3f} ms/call",
                    target="< 1 ms",
                    passed=public < 1.0,
                )
            )
        idle_ms, due_ms, enqueued = tick_costs(conn, args.schedules)
        rows.append(
            Row(
                f"S2. oq_tick(), {args.schedules:,} schedules, none due",
                f"{idle_ms:.3f} ms/call",
                target="< 1 ms",
                passed=idle_ms < 1.0,
            )
        )
        rows.append(
            Row(
                f"S3. oq_tick(), {args.schedules:,} schedules, all due ({enqueued:,} jobs enqueued)",
                f"{due_ms:.1f} ms/call ({due_ms * 1000 / max(enqueued, 1):.0f} us/schedule)",
            )
        )
        report(
            "Schedules: oq_cron_next and oq_tick",
            "`python -m bench.schedules`: oq_cron_next per call in a server-side loop (public function, "
            "and the stored parsed form oq_tick uses); oq_tick with 1,000 schedules none due and all due.",
            rows,
            dsn,
        )


if __name__ == "__main__":
    main()
