"""Throughput: 50,000 no-op jobs preloaded, drained by 2 worker processes.

The jobs are enqueued first (oq_enqueue_batch, 5,000 a call); then two worker
processes start and the clock runs until every job is completed. Reported:
jobs/s over that wall time (process start-up included) and over the span
between the first and the last completion as the database recorded it.

    python -m bench.throughput [--jobs 50000] [--processes 2] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import time

import psycopg
from psycopg.types.json import Jsonb

from .common import database, machine, server_version, spawn, wait_until_drained


def preload(dsn: str, queue: str, jobs: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, jobs, 5000):
            payloads = [{"n": n} for n in range(start, min(start + 5000, jobs))]
            conn.execute("select count(*) from openqueue.oq_enqueue_batch(%s, %s)", (queue, Jsonb(payloads)))
        conn.execute("vacuum analyze openqueue.live_jobs")


def measure(dsn: str, kind: str, jobs: int, processes: int, concurrency: int, batch_size: int) -> dict:
    queue = f"throughput_{kind}"
    preload(dsn, queue, jobs)
    started = time.monotonic()
    options = {"--dsn": dsn, "--queue": queue, "--kind": kind}
    options |= {"--concurrency": str(concurrency), "--batch-size": str(batch_size)}
    arguments = [item for pair in options.items() for item in pair]
    workers = [spawn("bench.worker_proc", *arguments) for _ in range(processes)]
    try:
        wait_until_drained(dsn, queue, jobs, timeout=900)
        wall = time.monotonic() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "select extract(epoch from max(finished_at) - min(finished_at)) from openqueue.finished_jobs "
            "where queue_name = %s",
            (queue,),
        ).fetchone()
    span = float(row[0]) if row and row[0] else wall
    return {
        "worker": kind,
        "jobs": jobs,
        "processes": processes,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "wall_s": round(wall, 2),
        "jobs_per_s_wall": round(jobs / wall),
        "jobs_per_s_db_span": round(jobs / span),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--kind", choices=["sync", "async", "both"], default="both")
    args = parser.parse_args()
    kinds = ["sync", "async"] if args.kind == "both" else [args.kind]
    with database() as dsn:
        runs = [
            measure(dsn, kind, args.jobs, args.processes, args.concurrency, args.batch_size) for kind in kinds
        ]
        results = {
            "benchmark": "throughput",
            "machine": machine(),
            "postgres": server_version(dsn),
            "runs": runs,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
