"""Figure 5: wake-up latency of an idle worker (commit -> handler start) vs a bare pgbench commit.

    python -m bench.wakeup [--jobs 300] [--gap-ms 20] [--pgbench-seconds 4]

The technique of bench.latency: one worker process (concurrency 4, poll
interval 60 s, so every pick-up is a LISTEN/NOTIFY wake-up) waits on an empty
queue; jobs are enqueued one at a time, ``--gap-ms`` apart, each in its own
transaction; a job's latency is its handler's start (``time.monotonic()``,
one clock for every process of the machine) minus the moment the producer's
COMMIT returned. The yardstick is pgbench on the same server: one INSERT per
transaction, ``-c 1``, run right before and right after the workers; its
mean latency (pgbench's "latency average") is the figure to compare with.
Targets: Worker p50 <= 1.2x that, p99 <= 3 ms. AsyncWorker rows and
``pgbench -c 8`` are for information, and so is a hand-rolled idle worker
(``bench.latency.measure_hand_rolled``: LISTEN, then the yardstick's SKIP
LOCKED lease, in one process with two plain connections), measured the same
way: how close any queue that leases durably on a notification gets.
"""

from __future__ import annotations

import argparse
import statistics

from . import pgbench
from .common import database
from .latency import measure, measure_hand_rolled
from .results import Row, fmt_ms, ratio, report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20)
    parser.add_argument("--pgbench-seconds", type=int, default=4)
    args = parser.parse_args()
    with database() as dsn:
        before = pgbench.run(dsn, 1, args.pgbench_seconds)
        runs = {kind: measure(dsn, args.jobs, args.gap_ms / 1000, kind) for kind in ("sync", "async")}
        runs["hand-rolled"] = measure_hand_rolled(dsn, args.jobs, args.gap_ms / 1000)
        after = pgbench.run(dsn, 1, args.pgbench_seconds)
        eight = pgbench.run(dsn, 8, args.pgbench_seconds)
        rows = []
        if before is None or after is None or eight is None:
            yard = None
            print("pgbench not found: no yardstick")
        else:
            yard = statistics.fmean([before.mean, after.mean])
            print(
                f"  pgbench -c 1: mean {before.mean * 1000:.3f} / {after.mean * 1000:.3f} ms, "
                f"p50 {before.p50 * 1000:.3f} / {after.p50 * 1000:.3f} ms, "
                f"p99 {before.p99 * 1000:.3f} / {after.p99 * 1000:.3f} ms, "
                f"{before.tps:,.0f} / {after.tps:,.0f} tps"
            )
        for kind, name in (("sync", "Worker"), ("async", "AsyncWorker")):
            p50, p99 = runs[kind]["p50_ms"] / 1000, runs[kind]["p99_ms"] / 1000
            target = kind == "sync"
            if yard is not None:
                r = ratio(p50, yard)
                passed = r <= 1.2 if target else None
                rows.append(
                    Row(f"5. {name} wake-up p50", fmt_ms(p50), fmt_ms(yard), f"{r:.2f}x", "<= 1.20x", passed)
                )
            rows.append(
                Row(
                    f"5. {name} wake-up p99",
                    fmt_ms(p99),
                    target="<= 3 ms",
                    passed=(p99 <= 0.003) if target else None,
                )
            )
        hand = runs["hand-rolled"]
        if yard is not None:
            p50 = hand["p50_ms"] / 1000
            rows.append(
                Row(
                    "5. hand-rolled LISTEN + SKIP LOCKED lease, p50 / p99",
                    f"{fmt_ms(p50)} / {fmt_ms(hand['p99_ms'] / 1000)}",
                    fmt_ms(yard),
                    f"{ratio(p50, yard):.2f}x",
                )
            )
        if eight is not None:
            rows.append(
                Row(
                    "5. pgbench -c 8 single-row commits (reference)",
                    "-",
                    f"{eight.tps:,.0f} tps, mean {eight.mean * 1000:.2f} ms, p50 {eight.p50 * 1000:.2f} ms",
                )
            )
        description = (
            "Idle worker (concurrency 4, poll 60 s), 300 single-job commits 20 ms apart; latency = handler "
            "start - producer's COMMIT return. Yardstick: pgbench `-c 1` one-INSERT transactions on the same "
            "server, mean latency of a run before and a run after the workers. The hand-rolled row is the "
            "leanest idle worker for comparison: one LISTEN connection and, on each notification, the "
            "yardstick's SKIP LOCKED lease on a second one (autocommit, durable like the Worker's lease); "
            "jobs are the yardstick's INSERT + NOTIFY, same count and gap."
        )
        report("5. Wake-up latency", description, rows, dsn)


if __name__ == "__main__":
    main()
