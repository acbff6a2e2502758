"""What an idle Worker sends per sporadic job: statements counted by the oq_* function they call.

    python -m bench.idle_calls [--jobs 10] [--gap 1.0]

A diagnostic, not a figure (nothing goes to RESULTS.md). One ``Worker``
(concurrency 4, poll 60 s, tick off) runs in this process; a wrapper around
``Connections.run`` counts every statement it sends. Once its start-up is
over, ``--jobs`` jobs are enqueued one at a time, ``--gap`` seconds apart,
and the script prints the statements sent meanwhile, per function. Each job
needs one ``oq_lease`` and one ``oq_ack_many``; anything more is what the
worker spends on being idle (for example the flow-control retries after a
short lease, which schema version 8 keeps for queues with limits).
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

import psycopg

from openqueue_py import Worker
from openqueue_py.worker import connections

from .common import database, statement_name

QUEUE = "idle_calls"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between two jobs")
    args = parser.parse_args()
    counts: collections.Counter[str] = collections.Counter()
    run = connections.Connections.run

    async def counted_run(self: connections.Connections, call):  # type: ignore[no-untyped-def]
        counts[statement_name(call.query)] += 1
        return await run(self, call)

    connections.Connections.run = counted_run  # type: ignore[method-assign]
    handled: list[int] = []
    with database() as dsn:
        worker = Worker(
            dsn,
            {QUEUE: lambda job: handled.append(job.id)},
            concurrency=4,
            poll_interval=60,
            tick_interval=0,
            handle_signals=False,
        )
        thread = threading.Thread(target=worker.run)
        thread.start()
        time.sleep(2)  # start-up: its first leases, oq_wait, oq_next_run_at
        counts.clear()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(args.jobs):
                conn.execute("select openqueue.oq_enqueue(%s, '{}')", (QUEUE,))
                time.sleep(args.gap)
        sent = dict(counts)
        worker.stop()
        thread.join()
    print(f"{len(handled)} jobs handled, one every {args.gap:g} s; statements the worker sent meanwhile:")
    for name, count in sorted(sent.items(), key=lambda item: -item[1]):
        print(f"  {name:<40} {count:>5}  ({count / max(args.jobs, 1):.1f} per job)")


if __name__ == "__main__":
    main()
