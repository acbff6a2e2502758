"""Flow control (issue 9): a limited queue's observed running count and lease rate against its limits.

    python -m bench.limits [--processes 2] [--slots 8] [--jobs 300] [--rate-jobs 500]

Two queues are drained by ``--processes`` Worker processes of ``--slots``
slots each (the Worker's default settings):

* ``max_running = 5``, ``--jobs`` jobs whose handler sleeps 20 ms. A monitor
  samples the queue's processing count (``oq_stats``) every few
  milliseconds, and the handlers' own start and end times (wall clock, one
  machine) give the most jobs ever inside a handler at once; both must stay
  at or under 5.
* ``rate_limit = 100`` per second, ``--rate-jobs`` no-op jobs. The handlers'
  start times stand for the lease times (a lease precedes its handler): the
  rate over the drain must stay at or under 100 jobs/s (plus the burst of
  100 over the span), and no 1-second window may hold more than the
  contract's ``rate_limit x (T / rate_period + 1)`` = 200.

No yardstick: the limits are the targets.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from datetime import timedelta

import psycopg

from openqueue_py import Client

from .common import database, wait_until_drained
from .results import Row, report

CTX = mp.get_context("spawn")
MAX_RUNNING = 5
RATE = 100


def _worker_main(dsn: str, queue: str, slots: int, sleep: float) -> None:
    """multiprocessing target: one Worker; its handler returns its start and end times."""
    from openqueue_py import Worker

    def handle(job: object) -> list[float]:
        start = time.time()
        if sleep:
            time.sleep(sleep)
        return [start, time.time()]

    Worker(dsn, {queue: handle}, concurrency=slots).run()


def _drain(dsn: str, queue: str, jobs: int, processes: int, slots: int, sleep: float) -> tuple[int, list]:
    """Start the workers, wait for the drain; (most processing seen by the monitor, handler times)."""
    most = [0]
    done = threading.Event()

    def monitor() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "select processing from openqueue.oq_stats() where queue_name = %s", (queue,)
                ).fetchone()
                most[0] = max(most[0], row[0] if row else 0)
                time.sleep(0.002)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    procs = [CTX.Process(target=_worker_main, args=(dsn, queue, slots, sleep)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    try:
        wait_until_drained(dsn, queue, jobs)
    finally:
        done.set()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(30)
        watcher.join(10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        times = [
            tuple(r[0])
            for r in conn.execute(
                "select result from openqueue.jobs where queue_name = %s and status = 'completed'", (queue,)
            )
        ]
    return most[0], times


def _most_at_once(intervals: list) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def _most_in_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    best = first = 0
    for last, t in enumerate(starts):
        while t - starts[first] > window:
            first += 1
        best = max(best, last - first + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate-jobs", type=int, default=500)
    args = parser.parse_args()
    with database() as dsn:
        with Client(dsn) as client:
            client.set_queue_limits("bench_max_running", max_running=MAX_RUNNING)
            client.set_queue_limits("bench_rate", rate_limit=RATE, rate_period=timedelta(seconds=1))
            client.enqueue_batch("bench_max_running", [{"n": n} for n in range(args.jobs)])
            client.enqueue_batch("bench_rate", [{"n": n} for n in range(args.rate_jobs)])

        sampled, times = _drain(dsn, "bench_max_running", args.jobs, args.processes, args.slots, 0.02)
        in_handlers = _most_at_once(times)
        span = max(end for _, end in times) - min(start for start, _ in times)

        _, rate_times = _drain(dsn, "bench_rate", args.rate_jobs, args.processes, args.slots, 0.0)
        starts = [start for start, _ in rate_times]
        rate_span = max(starts) - min(starts)
        rate = (len(starts) - RATE) / rate_span if rate_span > 0 else float("inf")  # the burst aside
        window = _most_in_window(starts, 1.0)

        rows = [
            Row(
                f"limits: max_running = {MAX_RUNNING} ({args.jobs} jobs of 20 ms)",
                f"max {sampled} processing (sampled), {in_handlers} in handlers at once; "
                f"{args.jobs / span:,.0f} jobs/s",
                target=f"<= {MAX_RUNNING}",
                passed=sampled <= MAX_RUNNING and in_handlers <= MAX_RUNNING,
            ),
            Row(
                f"limits: rate_limit = {RATE}/s ({args.rate_jobs} jobs)",
                f"{rate:,.0f} leases/s after the burst; at most {window} in any 1 s",
                target=f"<= {RATE}/s; <= {2 * RATE} in 1 s",
                passed=window <= 2 * RATE and rate <= RATE * 1.05,
            ),
        ]
        report(
            "Flow control limits",
            f"bench/limits.py: {args.processes} Worker processes x {args.slots} slots drain a queue with "
            f"max_running = {MAX_RUNNING} (handlers sleep 20 ms) and one with rate_limit = {RATE}/s "
            "(no-op handlers); observed maximum running count and lease rate against the limits.",
            rows,
            dsn,
        )


if __name__ == "__main__":
    main()
