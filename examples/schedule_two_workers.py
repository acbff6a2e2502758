"""Two workers and a `* * * * *` schedule: exactly one job per minute, run once.

    python examples/schedule_two_workers.py [--minutes 3]      # a throw-away embedded PostgreSQL
    OPENQUEUE_DSN=postgresql://... python examples/schedule_two_workers.py

Both workers tick (``tick_interval`` 1 s, the default) and both serve the
queue. Once per minute, just after the slot, this script prints the slot,
how many jobs the schedule has enqueued for it and which worker ran each;
at the end, a summary line: every minute has exactly one job, run once.
Exits with status 1 if any minute had another count.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import psycopg

from openqueue_py import Client, Job, Worker, install


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=3, help="how many minute slots to watch (default 3)")
    args = parser.parse_args()

    with ExitStack() as stack:
        dsn = os.environ.get("OPENQUEUE_DSN")
        if not dsn:
            from openqueue_py.embedded import EmbeddedPostgres

            dsn = stack.enter_context(EmbeddedPostgres()).dsn()
        install(dsn)
        client = stack.enter_context(Client(dsn))
        client.unschedule("every-minute")
        client.schedule("every-minute", "* * * * *", "minutely", {"hello": "world"})

        runs: Counter[int] = Counter()
        ran_by: dict[int, str] = {}
        lock = threading.Lock()

        def make_handler(name: str):
            def handle(job: Job) -> None:
                with lock:
                    runs[job.id] += 1
                    ran_by[job.id] = name

            return handle

        workers = [
            Worker(
                dsn, {"minutely": make_handler(f"worker-{n}")}, handle_signals=False, worker_id=f"worker-{n}"
            )
            for n in (1, 2)
        ]
        threads = [threading.Thread(target=w.run, name=f"worker-{n}") for n, w in enumerate(workers, 1)]
        for thread in threads:
            thread.start()

        first = client.cron_next("* * * * *", datetime.now(UTC))
        print(
            f"2 workers running; schedule 'every-minute' (* * * * *); first slot {first:%H:%M} UTC",
            flush=True,
        )
        ok = True
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for k in range(args.minutes):
                    slot = first + timedelta(minutes=k)
                    # Wait until the slot has passed and its job (if any) has had time to run.
                    while datetime.now(UTC) < slot + timedelta(seconds=5):
                        time.sleep(0.2)
                    rows = conn.execute(
                        "select id, status from openqueue.jobs where idempotency_key = %s",
                        (f"schedule:every-minute:{int(slot.timestamp())}",),
                    ).fetchall()
                    total = conn.execute(
                        "select count(*) from openqueue.jobs where queue_name = 'minutely'"
                    ).fetchone()[0]
                    with lock:
                        detail = ", ".join(
                            f"job {job_id} {status} by {ran_by.get(job_id, '-')} ({runs[job_id]} run)"
                            for job_id, status in rows
                        )
                    good = len(rows) == 1 and all(runs[job_id] == 1 for job_id, _ in rows)
                    ok = ok and good
                    print(
                        f"{slot:%H:%M} UTC: {len(rows)} job for this minute [{detail}]; "
                        f"{total} jobs so far{'' if good else '  <-- WRONG'}",
                        flush=True,
                    )
        finally:
            for worker in workers:
                worker.stop()
            for thread in threads:
                thread.join()
        per_minute = "exactly one job per minute" if ok else "NOT one job per minute"
        print(f"{args.minutes} minutes, 2 workers: {per_minute}, each run once: {sorted(runs.values())}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
