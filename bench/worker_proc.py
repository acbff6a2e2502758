"""A benchmark worker process: ``python -m bench.worker_proc --dsn ... --queue ...``.

Handlers return ``time.monotonic()`` at their start (CLOCK_MONOTONIC is one
clock for every process of the machine), stored as the job's result, so the
parent can measure enqueue-commit -> handler-start without sharing memory.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from openqueue_py import AsyncWorker, Worker
from openqueue_py.models import Job


def started(job: Job) -> float:
    return time.monotonic()


async def started_async(job: Job) -> float:
    return time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queue", required=True, help="a queue name, or several separated by commas")
    parser.add_argument("--kind", choices=["sync", "async"], default="sync")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    args = parser.parse_args()
    options = {
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "poll_interval": args.poll_interval,
    }
    if args.kind == "sync":
        Worker(args.dsn, dict.fromkeys(args.queue.split(","), started), **options).run()
    else:
        handlers = dict.fromkeys(args.queue.split(","), started_async)
        asyncio.run(AsyncWorker(args.dsn, handlers, **options).run())


if __name__ == "__main__":
    main()
