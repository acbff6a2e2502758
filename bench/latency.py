"""Wake-up latency: enqueue commit -> handler start, for an idle worker.

One worker process (concurrency 4, poll interval 60 s, so every pick-up is a
LISTEN/NOTIFY wake-up) waits on an empty queue; 300 jobs are enqueued one at
a time, 20 ms apart, each in its own transaction. A job's latency is the
handler's start (its stored result, time.monotonic() in the worker) minus the
moment the enqueue's COMMIT returned to the producer.

    python -m bench.latency [--jobs 300] [--gap-ms 20]
"""

from __future__ import annotations

import argparse
import json
import time

import psycopg
from psycopg.types.json import Jsonb

from .common import database, machine, server_version, spawn, summary_ms, wait_until_drained


def measure(dsn: str, jobs: int, gap_s: float, kind: str) -> dict:
    queue = f"latency_{kind}"
    worker = spawn(
        "bench.worker_proc", "--dsn", dsn, "--queue", queue, "--kind", kind, "--poll-interval", "60"
    )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Warm-up: the worker is up and listening once this job is done.
            conn.execute("select openqueue.oq_enqueue(%s, %s)", (queue, Jsonb({"warmup": True})))
            wait_until_drained(dsn, queue, 1, timeout=60)
            time.sleep(0.5)
            committed: dict[int, float] = {}
            for _ in range(jobs):
                row = conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,)).fetchone()
                committed[row[0]] = time.monotonic()  # autocommit: COMMIT has returned
                time.sleep(gap_s)
            wait_until_drained(dsn, queue, jobs + 1, timeout=120)
            rows = conn.execute(
                "select id, result from openqueue.jobs where queue_name = %s and id = any(%s)",
                (queue, list(committed)),
            ).fetchall()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    latencies = [float(result) - committed[job_id] for job_id, result in rows]
    return {"worker": kind, "jobs": len(latencies), "gap_ms": gap_s * 1000, **summary_ms(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20)
    parser.add_argument("--kind", choices=["sync", "async", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sync", "async"] if args.kind == "both" else [args.kind]
    with database() as dsn:
        results = {
            "benchmark": "wake-up latency",
            "machine": machine(),
            "postgres": server_version(dsn),
            "runs": [measure(dsn, args.jobs, args.gap_ms / 1000, kind) for kind in kinds],
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
