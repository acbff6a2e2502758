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
import multiprocessing as mp
import time

import psycopg
from psycopg.types.json import Jsonb

from . import yardstick
from .common import database, machine, server_version, spawn, summary_ms, wait_until_drained

CTX = mp.get_context("spawn")


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


def _hand_rolled(dsn: str, queue: str, ready, out) -> None:
    """The leanest idle worker: LISTEN on one connection; on a notification, the yardstick's lease."""
    starts: list[tuple[int, float]] = []
    with psycopg.connect(dsn, autocommit=True) as listen, psycopg.connect(dsn, autocommit=True) as work:
        listen.execute("listen yardstick")
        for _ in range(6):  # past psycopg's prepare threshold, as a worker long up would be
            work.execute(yardstick.LEASE, (queue, 4)).fetchall()
        ready.set()
        for note in listen.notifies():
            if note.payload == "stop":
                break
            while rows := work.execute(yardstick.LEASE, (queue, 4)).fetchall():
                for job_id, _payload in rows:
                    starts.append((job_id, time.monotonic()))  # the "handler" starts here
                    work.execute(yardstick.ACK_ONE, (job_id,))
    out.put(starts)


def measure_hand_rolled(dsn: str, jobs: int, gap_s: float) -> dict:
    """The same measurement for a hand-rolled queue: the yardstick's INSERT + NOTIFY, its lease."""
    queue = "latency_yardstick"
    with psycopg.connect(dsn, autocommit=True) as conn:
        yardstick.setup(conn)
    ready, out = CTX.Event(), CTX.Queue()
    proc = CTX.Process(target=_hand_rolled, args=(dsn, queue, ready, out), daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the hand-rolled listener did not start")
        time.sleep(0.5)
        committed: dict[int, float] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(jobs):
                row = conn.execute(yardstick.ENQUEUE_NOTIFY, (queue, Jsonb({}))).fetchone()
                committed[row[0]] = time.monotonic()  # autocommit: COMMIT has returned
                time.sleep(gap_s)
            time.sleep(0.5)
            conn.execute("select pg_notify('yardstick', 'stop')")
        starts = out.get(timeout=60)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
    latencies = [started - committed[job_id] for job_id, started in starts if job_id in committed]
    return {"worker": "hand-rolled", "jobs": len(latencies), "gap_ms": gap_s * 1000, **summary_ms(latencies)}


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
