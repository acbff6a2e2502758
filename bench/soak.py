"""Figure 7: churn soak at half the maximum drain rate, retention on; sizes and drain rate over time.

    python -m bench.soak [--minutes 30] [--rate JOBS_PER_S] [--sample 30] [--keep-minutes 2]

1. The maximum drain rate R: 20,000 preloaded jobs drained by the Worker
   (2 processes x 8 slots, default settings), as in bench.drain.
2. For ``--minutes``: 2 producer processes enqueue R/2 jobs/s in total
   (``oq_enqueue_batch`` every 50 ms, paced on the clock; ``--rate`` sets it
   instead) while the same 2 x 8 Worker drains them; every minute the
   retention purges finished jobs older than ``--keep-minutes``
   (``oq_purge_batch(older_than, false, 10000)`` until it deletes nothing
   when installed, else ``oq_purge``).
3. Every ``--sample`` seconds: the total size of OpenQueue's tables with
   their indexes and TOAST (sum of pg_total_relation_size over the tables of
   schema openqueue), the drain rate over the last interval (handler calls,
   counted in shared memory) and the backlog (enqueued - handled).

Pass: every size sampled after the baseline minute (5, or a third of a
shorter run) is at most 1.2x the largest size sampled until then (retention
and autovacuum both run about once a minute, so sizes saw-tooth), and the drain rate over the last
fifth of the run is at least 0.9x the rate between minute 1 and the baseline.
The yardstick column holds the baseline values.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from .common import database, function_kind
from .drain import drain_worker, start_workers, stop_workers
from .results import Row, fmt_rate, report

CTX = mp.get_context("spawn")
QUEUE = "soak"


def _producer(dsn: str, rate: float, produced, stop) -> None:
    tick = 0.05
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        started = time.monotonic()
        sent = 0
        while not stop.is_set():
            due = int((time.monotonic() - started) * rate) - sent
            if due > 0:
                cur.execute(
                    "select count(*) from openqueue.oq_enqueue_batch(%s, %s)", (QUEUE, Jsonb([{}] * due))
                )
                sent += due
                with produced.get_lock():
                    produced.value += due
            time.sleep(tick)


def table_bytes(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class as c "
        "join pg_namespace as n on n.oid = c.relnamespace where n.nspname = 'openqueue' and c.relkind = 'r'"
    ).fetchone()
    return int(row[0]) if row else 0


def retention(conn: psycopg.Connection, keep: str) -> int:
    kind = function_kind(conn, "oq_purge_batch")
    if kind == "p":
        conn.execute("call openqueue.oq_purge_batch(%s::interval, false, 10000)", (keep,))
        return -1
    if kind == "f":
        total = 0
        while True:
            row = conn.execute(
                "select * from openqueue.oq_purge_batch(%s::interval, false, 10000)", (keep,)
            ).fetchone()
            got = int(row[0]) if row and row[0] is not None else 0
            total += got
            if got == 0:
                return total
    row = conn.execute("select openqueue.oq_purge(%s::interval)", (keep,)).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Sample:
    minute: float
    size: int
    rate: float
    backlog: int


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=None, help="jobs/s to produce (default: half the max)")
    parser.add_argument("--sample", type=float, default=30)
    parser.add_argument("--keep-minutes", type=float, default=2)
    args = parser.parse_args()
    keep = f"{args.keep_minutes} minutes"
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        top = drain_worker(dsn, "soak_max", 20_000, "sync", 2, 8, None).rate
        rate = args.rate or top / 2
        print(f"max drain rate {top:,.0f} jobs/s; producing {rate:,.0f} jobs/s for {args.minutes} min")
        procs, handled = start_workers(dsn, QUEUE, "sync", 2, 8, None)
        produced, stop = CTX.Value("q", 0), CTX.Event()
        producers = [CTX.Process(target=_producer, args=(dsn, rate / 2, produced, stop)) for _ in range(2)]
        for proc in producers:
            proc.start()
        samples: list[Sample] = []
        purged = 0
        started = time.monotonic()
        last_purge = started
        last_t, last_n = started, 0
        try:
            while (now := time.monotonic()) - started < args.minutes * 60:
                time.sleep(min(args.sample, args.minutes * 60 - (now - started)))
                now = time.monotonic()
                if now - last_purge >= 60:
                    purged += max(0, retention(conn, keep))
                    last_purge = now
                n = handled.value
                sample = Sample(
                    (now - started) / 60, table_bytes(conn), (n - last_n) / (now - last_t), produced.value - n
                )
                samples.append(sample)
                last_t, last_n = now, n
                print(
                    f"  {sample.minute:5.1f} min: tables {sample.size / 2**20:8.1f} MB, "
                    f"drain {sample.rate:8,.0f} jobs/s, backlog {sample.backlog:,}",
                    flush=True,
                )
        finally:
            stop.set()
            for proc in producers:
                proc.join(timeout=30)
            stop_workers(procs)
        base_minute = min(5.0, args.minutes / 3)
        base = next((s for s in samples if s.minute >= base_minute - 1e-6), samples[-1])
        later = [s for s in samples if s.minute > base.minute]
        early = [s for s in samples if 1.0 <= s.minute <= base.minute] or [base]
        tail = samples[-max(1, len(samples) // 5) :]
        base_rate = statistics.fmean(s.rate for s in early)
        tail_rate = statistics.fmean(s.rate for s in tail)
        # Retention purges once a minute and autovacuum visits once a minute,
        # so the size saw-tooths within every minute; the size "after the
        # first 5 minutes" is the largest reached by then, not whichever
        # phase of the tooth the sample at minute 5 happened to catch.
        base_size = max(s.size for s in samples if s.minute <= base.minute + 1e-6)
        biggest = max((s.size for s in later), default=base_size)
        rows = [
            Row(
                f"7. table+index size, {args.minutes:g} min soak (max after min {base.minute:.0f} / before)",
                f"{biggest / 2**20:.1f} MB",
                f"{base_size / 2**20:.1f} MB",
                f"{biggest / base_size:.2f}x",
                "<= 1.20x",
                biggest <= 1.2 * base_size,
            ),
            Row(
                f"7. drain rate, last fifth vs minutes 1-{base.minute:.0f} ({rate:,.0f} jobs/s produced)",
                fmt_rate(tail_rate),
                fmt_rate(base_rate),
                f"{tail_rate / base_rate:.2f}x",
                ">= 0.90x",
                tail_rate >= 0.9 * base_rate,
            ),
            Row(
                "7. backlog at the end; jobs purged",
                f"{samples[-1].backlog:,} waiting; {purged:,} purged",
            ),
        ]
        description = (
            "`make bench-soak` (30 minutes; `python -m bench.soak --minutes N`): 2 producers at half the "
            "Worker's max drain rate, 2 x 8 Worker, retention every minute (keep 2 minutes); sizes = sum of "
            "pg_total_relation_size over openqueue's tables, sampled every 30 s. The yardstick column is "
            "the run's own baseline: the largest size sampled in the first 5 minutes, the mean drain rate of "
            "minutes 1-5."
        )
        report("7. Churn soak", description, rows, dsn)


if __name__ == "__main__":
    main()
