"""Figure 3: figures 1 and 2 with AsyncWorker (targets: within 10 % of theirs, 0.9x and 1.17x).

    python -m bench.drain_async [--jobs 20000] [--processes 2] [--slots 8]

As bench.drain and bench.drain_one, with ``AsyncWorker`` and ``async def``
no-op handlers; each is bracketed by its own yardstick runs.
"""

from __future__ import annotations

from .common import database
from .drain import arguments, bracketed, describe, drain_row
from .results import report


def main() -> None:
    args = arguments(__doc__)
    with database() as dsn:
        batched, yard_batched = bracketed(dsn, args.jobs, args.processes, args.slots, None, "async")
        one, yard_one = bracketed(dsn, args.jobs, args.processes, args.slots, 1, "async")
        rows = [
            drain_row("3. AsyncWorker drain, batched fetch (default)", batched, yard_batched, 0.9 * 1.0),
            drain_row("3. AsyncWorker drain, batch_size=1", one, yard_one, 0.9 * 1.3),
        ]
        report("3. Drain with AsyncWorker", describe("AsyncWorker, default and batch_size=1"), rows, dsn)


if __name__ == "__main__":
    main()
