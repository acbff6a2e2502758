"""Figure 1: Worker drain, batched fetch (default settings) vs the yardstick's batched drain.

    python -m bench.drain [--jobs 20000] [--processes 2] [--slots 8]

``--jobs`` no-op jobs are preloaded (oq_enqueue_batch), then ``--processes``
worker processes with ``--slots`` slots each drain them. The yardstick runs
right before and right after on the same server (same processes, slots and
batch size: k = free slots), and the ratio is taken against the mean of the
two. A rate is jobs over the span between the first and the last ack
(process start-up excluded on both sides): for OpenQueue from the jobs'
``finished_at``, for the yardstick from the loops' own clocks. An extra row
drives OpenQueue's SQL with the yardstick's own loop, to tell the cost of the
SQL from the cost of the ``Worker``.

This module also holds the drain machinery of figures 2, 3, 6 and 10.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass

import psycopg

from . import yardstick
from .common import database, preload, unfinished
from .results import Row, fmt_rate, ratio, report

CTX = mp.get_context("spawn")


@dataclass(frozen=True)
class Drain:
    jobs: int
    rate: float  # jobs/s, first to last ack
    wall: float  # seconds, process start to the last ack seen (start-up included)


def analyze(conn: psycopg.Connection, schema: str, vacuum: bool = True) -> None:
    """(VACUUM) ANALYZE every table of ``schema``, whatever the layout is."""
    rows = conn.execute(
        "select format('%%I.%%I', n.nspname, c.relname) from pg_class as c "
        "join pg_namespace as n on n.oid = c.relnamespace where n.nspname = %s and c.relkind in ('r', 'p')",
        (schema,),
    ).fetchall()
    for (name,) in rows:
        conn.execute(f"{'vacuum analyze' if vacuum else 'analyze'} {name}")


# -- OpenQueue's Worker ------------------------------------------------------------------------


def _oq_worker_main(dsn: str, queue: str, kind: str, slots: int, batch: int | None, counter) -> None:
    """multiprocessing target: one Worker/AsyncWorker; its no-op handler counts in shared memory."""
    import threading

    from openqueue_py import AsyncWorker, Worker

    # ``counter`` belongs to this process alone (no cross-process lock on the
    # hot path): the slot threads of a Worker share a local lock; an
    # AsyncWorker's handlers all run on one thread and need none.
    local = threading.Lock()

    def handle(job: object) -> None:
        with local:
            counter.value += 1

    async def handle_async(job: object) -> None:
        counter.value += 1

    options = {"concurrency": slots, "batch_size": batch}
    if kind == "sync":
        Worker(dsn, {queue: handle}, **options).run()
    else:
        asyncio.run(AsyncWorker(dsn, {queue: handle_async}, **options).run())


class Counters:
    """One shared, lock-free counter per worker process; ``value`` is their sum."""

    def __init__(self, processes: int) -> None:
        self.parts = [CTX.Value("q", 0, lock=False) for _ in range(processes)]

    @property
    def value(self) -> int:
        return sum(part.value for part in self.parts)


def start_workers(dsn: str, queue: str, kind: str, processes: int, slots: int, batch: int | None):
    counter = Counters(processes)
    procs = [
        CTX.Process(target=_oq_worker_main, args=(dsn, queue, kind, slots, batch, part), daemon=True)
        for part in counter.parts
    ]
    for proc in procs:
        proc.start()
    return procs, counter


def stop_workers(procs: list) -> None:
    for proc in procs:
        proc.terminate()  # SIGTERM: a graceful stop
    for proc in procs:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()


def wait_drained(conn: psycopg.Connection, ids: list[int], counter, timeout: float = 900.0) -> float:
    """Wait until the handlers saw every job and every job is finished; the monotonic time then."""
    deadline = time.monotonic() + timeout
    while counter.value < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {counter.value} of {len(ids)} jobs handled within {timeout} s")
        time.sleep(0.02)
    while unfinished(conn, ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs handled but not all finished within {timeout} s")
        time.sleep(0.02)
    return time.monotonic()


def finished_span(conn: psycopg.Connection, ids: list[int]) -> float:
    """Seconds from the first to the last finished_at of these jobs (one contiguous id range)."""
    row = conn.execute(
        "select extract(epoch from max(finished_at) - min(finished_at)) "
        "from openqueue.jobs where id between %s and %s",
        (min(ids), max(ids)),
    ).fetchone()
    return float(row[0]) if row and row[0] else 0.0


def drain_worker(
    dsn: str, queue: str, jobs: int, kind: str, processes: int, slots: int, batch: int | None
) -> Drain:
    """Preload ``jobs`` jobs on ``queue``; drain them with Worker (kind 'sync') or AsyncWorker ('async')."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = preload(conn, queue, jobs)
        analyze(conn, "openqueue")
        started = time.monotonic()
        procs, counter = start_workers(dsn, queue, kind, processes, slots, batch)
        try:
            done = wait_drained(conn, ids, counter)
        finally:
            stop_workers(procs)
        span = finished_span(conn, ids)
    return Drain(jobs, (jobs - 1) / span if span else 0.0, done - started)


# -- the yardstick's loop ----------------------------------------------------------------------


def drain_lean(
    dsn: str, queue: str, jobs: int, flavor: str, processes: int, slots: int, batch: int | None
) -> Drain:
    """Drain with the yardstick's loop: the yardstick queue, or OpenQueue's SQL (flavor)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if flavor == "yardstick":
            yardstick.setup(conn)
            yardstick.preload(conn, queue, jobs)
            analyze(conn, "yardstick")
        else:
            preload(conn, queue, jobs)
            analyze(conn, "openqueue")
    out = CTX.Queue()
    started = time.monotonic()
    procs = [
        CTX.Process(target=yardstick.drain_process, args=(dsn, flavor, queue, slots, batch, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    tallies = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    handled = sum(t.handled for t in tallies)
    if handled != jobs:
        raise RuntimeError(f"the {flavor} loop handled {handled} of {jobs} jobs")
    span = max(t.last_ack for t in tallies) - min(t.first_ack for t in tallies if t.handled)
    return Drain(jobs, (jobs - 1) / span if span else 0.0, max(t.last_ack for t in tallies) - started)


_runs = 0


def queue_name(prefix: str) -> str:
    global _runs
    _runs += 1
    return f"{prefix}_{_runs}"


def bracketed(dsn: str, jobs: int, processes: int, slots: int, batch: int | None, kind: str):
    """Yardstick, Worker, yardstick: the Worker's Drain and the mean yardstick rate around it."""
    before = drain_lean(dsn, queue_name("ys"), jobs, "yardstick", processes, slots, batch)
    worker = drain_worker(dsn, queue_name(f"oq_{kind}"), jobs, kind, processes, slots, batch)
    after = drain_lean(dsn, queue_name("ys"), jobs, "yardstick", processes, slots, batch)
    yard = statistics.fmean([before.rate, after.rate])
    print(
        f"  {kind} batch={batch or 'free slots'}: Worker {worker.rate:,.0f} jobs/s; "
        f"yardstick {before.rate:,.0f} / {after.rate:,.0f} jobs/s"
    )
    return worker, yard


def drain_row(label: str, worker: Drain, yard: float, target: float) -> Row:
    r = ratio(worker.rate, yard)
    return Row(label, fmt_rate(worker.rate), fmt_rate(yard), f"{r:.2f}x", f">= {target:.2f}x", r >= target)


def arguments(doc: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    return parser.parse_args()


def describe(what: str) -> str:
    return (
        f"{what}: --jobs no-op jobs preloaded (default 20,000), 2 processes x 8 slots; "
        "rate = jobs over first-to-last ack; yardstick = mean of a run before and a run after "
        "(bench/yardstick.py, same processes, slots and batch size)."
    )


def main() -> None:
    args = arguments(__doc__)
    with database() as dsn:
        worker, yard = bracketed(dsn, args.jobs, args.processes, args.slots, None, "sync")
        lean = drain_lean(
            dsn, queue_name("lean"), args.jobs, "openqueue_sql", args.processes, args.slots, None
        )
        rows = [
            drain_row("1. Worker drain, batched fetch (default settings)", worker, yard, 1.0),
            Row(
                "1. OpenQueue SQL driven by the yardstick's loop",
                fmt_rate(lean.rate),
                fmt_rate(yard),
                f"{ratio(lean.rate, yard):.2f}x",
            ),
        ]
        report("1. Drain, batched fetch", describe("Worker with default settings"), rows, dsn)


if __name__ == "__main__":
    main()
