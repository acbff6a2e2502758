"""Figure 10: peak resident memory (VmHWM) of a worker process at concurrency 16 while draining (< 80 MB).

    python -m bench.rss [--jobs 20000]

A real worker process (``python -m bench.worker_proc``, the same entry a
user's worker script has: openqueue_py and psycopg imported, nothing else)
with concurrency 16 and default settings drains ``--jobs`` preloaded no-op
jobs; its VmHWM is read from /proc just before it is stopped. The same for
``AsyncWorker``. The yardstick is the yardstick loop with 16 slots in a
process of its own (batched fetch), also read from /proc.
"""

from __future__ import annotations

import argparse
import time

import psycopg

from . import yardstick
from .common import database, preload, spawn, unfinished, vm_hwm_mb
from .drain import analyze
from .results import Row, report


def worker_rss(dsn: str, kind: str, jobs: int) -> float:
    queue = f"rss_{kind}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = preload(conn, queue, jobs)
        analyze(conn, "openqueue")
        proc = spawn(
            "bench.worker_proc", "--dsn", dsn, "--queue", queue, "--kind", kind, "--concurrency", "16"
        )
        try:
            peak = 0.0
            deadline = time.monotonic() + 600
            while unfinished(conn, ids):
                peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
                if time.monotonic() > deadline:
                    raise TimeoutError("the worker did not drain its jobs")
                time.sleep(0.2)
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return peak


def yardstick_rss(dsn: str, jobs: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yardstick.setup(conn)
        yardstick.preload(conn, "rss_yardstick", jobs)
    proc = spawn("bench.yardstick", "--dsn", dsn, "--queue", "rss_yardstick", "--slots", "16")
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
        time.sleep(0.1)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    with database() as dsn:
        yard = yardstick_rss(dsn, args.jobs)
        rows = []
        for kind, name in (("sync", "Worker"), ("async", "AsyncWorker")):
            peak = worker_rss(dsn, kind, args.jobs)
            rows.append(
                Row(
                    f"10. {name} VmHWM, concurrency 16, draining",
                    f"{peak:.1f} MB",
                    f"{yard:.1f} MB",
                    f"{peak / yard:.2f}x",
                    "< 80 MB",
                    peak < 80,
                )
            )
        description = (
            "One worker process (bench/worker_proc.py, concurrency 16, default settings) draining 20,000 "
            "no-op jobs; peak RSS (VmHWM from /proc). Yardstick: the yardstick loop with 16 slots in its "
            "own process."
        )
        report("10. Worker memory", description, rows, dsn)


if __name__ == "__main__":
    main()
