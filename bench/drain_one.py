"""Figure 2: Worker drain with batch_size=1 vs the yardstick's fetch-one drain (target >= 1.3x).

    python -m bench.drain_one [--jobs 20000] [--processes 2] [--slots 8]

As bench.drain, with one job per lease on both sides: the Worker gets
``batch_size=1``; the yardstick runs one thread and one connection per slot,
each leasing one job and deleting it (bench/yardstick.py).
"""

from __future__ import annotations

from .common import database
from .drain import arguments, bracketed, describe, drain_row
from .results import report


def main() -> None:
    args = arguments(__doc__)
    with database() as dsn:
        worker, yard = bracketed(dsn, args.jobs, args.processes, args.slots, 1, "sync")
        rows = [drain_row("2. Worker drain, batch_size=1", worker, yard, 1.3)]
        report(
            "2. Drain, one job per fetch", describe("Worker(batch_size=1) vs yardstick fetch-one"), rows, dsn
        )


if __name__ == "__main__":
    main()
