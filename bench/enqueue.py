"""Figure 4: enqueue rate, one job per transaction and 1,000 per call, vs bare INSERTs (>= 0.9x).

    python -m bench.enqueue [--seconds 4] [--rounds 2]

One producer connection (psycopg 3, autocommit, statements prepared by
psycopg after a few runs on both sides), alternating OpenQueue and the
yardstick ``--rounds`` times, ``--seconds`` each:

* single: ``select openqueue.oq_enqueue(queue, payload)`` vs
  ``insert into yardstick.jobs (queue, payload) values (...) returning id``,
  one transaction (one durable commit) each;
* batch: ``oq_enqueue_batch(queue, <array of 1,000 payloads>)`` vs
  ``insert into yardstick.jobs (queue, payload) select ... from
  jsonb_array_elements(<the same array>) returning id``; the client sends
  the array and reads the 1,000 ids back on both sides;
* information: the yardstick's INSERT with a ``pg_notify`` in the same
  transaction (what the contract's NOTIFY on every enqueue costs even a
  hand-rolled queue) vs the bare INSERT.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from psycopg.types.json import Jsonb

from . import yardstick
from .common import database
from .results import Row, fmt_rate, ratio, report

OQ_SINGLE = "select openqueue.oq_enqueue(%s, %s)"
OQ_BATCH = "select id from openqueue.oq_enqueue_batch(%s, %s) as id"


def rate(conn: psycopg.Connection, sql: str, args: tuple, per_call: int, seconds: float) -> float:
    cur = conn.cursor()
    for _ in range(6):  # warm-up, and past psycopg's prepare threshold
        cur.execute(sql, args).fetchall()
    calls = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        cur.execute(sql, args).fetchall()
        calls += 1
    return calls * per_call / (time.monotonic() - started)


def compare(conn: psycopg.Connection, oq: tuple, ys: tuple, per_call: int, seconds: float, rounds: int):
    oq_rates, ys_rates = [], []
    for _ in range(rounds):
        ys_rates.append(rate(conn, *ys, per_call, seconds))
        oq_rates.append(rate(conn, *oq, per_call, seconds))
    return statistics.fmean(oq_rates), statistics.fmean(ys_rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    payload = Jsonb({"n": 1})
    batch = Jsonb([{"n": n} for n in range(1000)])
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        yardstick.setup(conn)
        single = compare(
            conn,
            (OQ_SINGLE, ("enqueue_single", payload)),
            (yardstick.ENQUEUE, ("enqueue_single", payload)),
            1,
            args.seconds,
            args.rounds,
        )
        # What the contract's NOTIFY costs the yardstick itself (information).
        notify = compare(
            conn,
            (yardstick.ENQUEUE_NOTIFY, ("enqueue_single", payload)),
            (yardstick.ENQUEUE, ("enqueue_single", payload)),
            1,
            args.seconds,
            args.rounds,
        )
        batched = compare(
            conn,
            (OQ_BATCH, ("enqueue_batch", batch)),
            (yardstick.ENQUEUE_BATCH, ("enqueue_batch", batch)),
            1000,
            args.seconds,
            args.rounds,
        )

        def target_row(label: str, rates: tuple[float, float]) -> Row:
            r = ratio(*rates)
            return Row(label, fmt_rate(rates[0]), fmt_rate(rates[1]), f"{r:.2f}x", ">= 0.90x", r >= 0.9)

        rows = [
            target_row("4. enqueue, one per transaction", single),
            Row(
                "4. yardstick INSERT + NOTIFY in one transaction",
                fmt_rate(notify[0]),
                fmt_rate(notify[1]),
                f"{ratio(*notify):.2f}x",
            ),
            target_row("4. enqueue, 1,000 per oq_enqueue_batch call", batched),
        ]
        description = (
            "One producer connection, autocommit; OpenQueue and the yardstick alternate (--rounds 2, "
            "--seconds 4 each). Yardstick: `INSERT ... RETURNING id` per transaction; "
            "`INSERT ... SELECT FROM jsonb_array_elements(...) RETURNING id` for the batch. The info row "
            "is the yardstick's INSERT with the `pg_notify` every OpenQueue enqueue owes its listeners "
            "(contract section 3), against the bare INSERT, alternated the same way."
        )
        report("4. Enqueue", description, rows, dsn)


if __name__ == "__main__":
    main()
