"""Where an idle Worker's wake-up time goes: commit -> notification -> lease -> handler.

    python -m bench.trace_wakeup [--jobs 200] [--gap-ms 20]

A diagnostic, not a figure (nothing goes to RESULTS.md). One ``Worker``
(concurrency 4, poll 60 s) runs in this process with two wrappers that only
take timestamps: ``Fetcher.mark_ready`` (a notification named its queue) and
``Connections.run`` (every statement, with its start and end). Jobs are
enqueued one at a time, ``--gap-ms`` apart; the script prints the p50 and
p90 of commit -> handler start and the timeline of the last few wake-ups in
ms from the producer's COMMIT returning (a notification can arrive before
the producer sees its commit return).
"""

from __future__ import annotations

import argparse
import threading
import time

import psycopg

from openqueue_py import Worker
from openqueue_py.worker import connections, fetcher

from .common import database, percentile, statement_name

QUEUE = "trace_wakeup"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20)
    args = parser.parse_args()
    marks: list[tuple[str, float, float | None]] = []

    mark_ready = fetcher.Fetcher.mark_ready

    def traced_mark_ready(self: fetcher.Fetcher, queue: str) -> None:
        marks.append(("notified", time.monotonic(), None))
        mark_ready(self, queue)

    run = connections.Connections.run

    async def traced_run(self: connections.Connections, call):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            return await run(self, call)
        finally:
            marks.append((statement_name(call.query), started, time.monotonic()))

    fetcher.Fetcher.mark_ready = traced_mark_ready  # type: ignore[method-assign]
    connections.Connections.run = traced_run  # type: ignore[method-assign]

    starts: dict[int, float] = {}

    def handler(job) -> None:  # type: ignore[no-untyped-def]
        starts[job.id] = time.monotonic()
        marks.append(("handler", starts[job.id], None))

    with database() as dsn:
        worker = Worker(dsn, {QUEUE: handler}, concurrency=4, poll_interval=60, handle_signals=False)
        thread = threading.Thread(target=worker.run)
        thread.start()
        time.sleep(2)
        committed: dict[int, float] = {}
        cycles: list[int] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(args.jobs):
                cycles.append(len(marks))
                job_id = conn.execute("select openqueue.oq_enqueue(%s, '{}')", (QUEUE,)).fetchone()[0]
                committed[job_id] = time.monotonic()
                marks.append(("commit", committed[job_id], None))
                time.sleep(args.gap_ms / 1000)
        time.sleep(0.5)
        worker.stop()
        thread.join()
    latencies = [(starts[j] - committed[j]) * 1000 for j in committed if j in starts]
    print(
        f"commit -> handler start, {len(latencies)} jobs: p50 {percentile(latencies, 50):.2f} ms, "
        f"p90 {percentile(latencies, 90):.2f} ms"
    )
    for first, last in zip(cycles[-4:-1], cycles[-3:], strict=True):
        cycle = marks[first:last]
        base = next(t for name, t, _ in cycle if name == "commit")
        print(
            " | ".join(
                f"{name} {1000 * (t - base):+.2f}" + (f"..{1000 * (end - base):+.2f}" if end else "")
                for name, t, end in cycle
            )
        )


if __name__ == "__main__":
    main()
