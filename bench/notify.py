"""Figure 8: NOTIFY cost: 8 producers' single-enqueue rate with 16 idle listening workers vs none (>= 85 %).

    python -m bench.notify [--seconds 5] [--producers 8] [--listeners 16] [--rounds 2]

Producers: ``--producers`` processes, each one autocommit connection calling
``oq_enqueue`` on queue ``notify_bench`` in a loop for ``--seconds`` (they
start together on a shared event). Listeners: ``--listeners`` real
``AsyncWorker`` instances (8 per process, concurrency 1, default settings)
for ANOTHER queue, so each one holds ``LISTEN openqueue`` and is woken by
every notification without ever having work. The figure is the producers'
rate with the listeners divided by their rate without any (the two
alternate ``--rounds`` times, listeners started and stopped each time, to
even out a noisy machine); it is measured
with the default notify mode and, when ``oq_set_queue_notify`` is installed,
with ``notify_bench`` set to ``'when_waiting'``. For information, the same
pair for a hand-rolled queue: producers running the yardstick's INSERT with
a ``pg_notify`` in the same transaction, listeners that are bare ``LISTEN
yardstick`` connections (threads that only read their notifications): what
a NOTIFY on every enqueue costs with 16 listeners, whoever sends it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import threading
import time

import psycopg
from psycopg.types.json import Jsonb

from . import yardstick
from .common import database, has_function
from .results import NA, Row, fmt_rate, ratio, report

CTX = mp.get_context("spawn")
QUEUE = "notify_bench"
OTHER = "notify_other"


# A producer's statement and its arguments: OpenQueue's enqueue, or the yardstick's INSERT + NOTIFY.
OQ_ENQUEUE = ("select openqueue.oq_enqueue(%s, '{}')", (QUEUE,))
YARDSTICK_ENQUEUE = (yardstick.ENQUEUE_NOTIFY, (QUEUE, Jsonb({})))


def _producer(dsn: str, statement: tuple, seconds: float, go, out) -> None:
    sql, args = statement
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        for _ in range(6):
            cur.execute(sql, args)
        go.wait()
        count = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            cur.execute(sql, args)
            count += 1
    out.put(count)


def _listeners(dsn: str, count: int) -> None:
    from openqueue_py import AsyncWorker

    async def never(job: object) -> None:
        return None

    async def run() -> None:
        workers = [
            AsyncWorker(dsn, {OTHER: never}, concurrency=1, handle_signals=False) for _ in range(count)
        ]
        await asyncio.gather(*(worker.run() for worker in workers))

    asyncio.run(run())


def _plain_listeners(dsn: str, count: int) -> None:
    """The yardstick's listeners: ``count`` bare ``LISTEN yardstick`` connections, one thread each."""

    def listen() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("listen yardstick")
            for _ in conn.notifies():
                pass

    threads = [threading.Thread(target=listen, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def produce(dsn: str, producers: int, seconds: float, statement: tuple = OQ_ENQUEUE) -> float:
    go, out = CTX.Event(), CTX.Queue()
    procs = [CTX.Process(target=_producer, args=(dsn, statement, seconds, go, out)) for _ in range(producers)]
    for proc in procs:
        proc.start()
    time.sleep(1.5)  # connected and warmed up
    go.set()
    total = sum(out.get(timeout=seconds + 120) for _ in procs)
    for proc in procs:
        proc.join()
    return total / seconds


def listening(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "select count(*) from pg_stat_activity where query ilike 'listen%%' and pid <> pg_backend_pid() "
        "and datname = current_database()"
    ).fetchone()
    return int(row[0]) if row else 0


def start_listeners(dsn: str, conn: psycopg.Connection, listeners: int, target=_listeners) -> list:
    per_process = 8
    procs = [
        CTX.Process(target=target, args=(dsn, min(per_process, listeners - start)), daemon=True)
        for start in range(0, listeners, per_process)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 60
    while listening(conn) < listeners and time.monotonic() < deadline:
        time.sleep(0.2)
    print(f"  {listening(conn)} LISTEN connections up")
    time.sleep(1.0)
    return procs


def stop(procs: list) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--listeners", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        modes = has_function(conn, "oq_set_queue_notify")

        def pair(statement: tuple = OQ_ENQUEUE, target=_listeners) -> tuple[float, float]:
            """Rates without and with listeners, alternated --rounds times; the means."""
            quiet, loud = [], []
            for _ in range(args.rounds):
                quiet.append(produce(dsn, args.producers, args.seconds, statement))
                listeners = start_listeners(dsn, conn, args.listeners, target)
                try:
                    loud.append(produce(dsn, args.producers, args.seconds, statement))
                finally:
                    stop(listeners)
            return statistics.fmean(quiet), statistics.fmean(loud)

        quiet, loud = pair()
        print(f"  default mode: {quiet:,.0f} jobs/s alone, {loud:,.0f} jobs/s with listeners")
        yardstick.setup(conn)
        quiet_ys, loud_ys = pair(YARDSTICK_ENQUEUE, _plain_listeners)
        print(f"  yardstick: {quiet_ys:,.0f} jobs/s alone, {loud_ys:,.0f} jobs/s with listeners")
        if modes:
            conn.execute("select openqueue.oq_set_queue_notify(%s, %s)", (QUEUE, "when_waiting"))
            quiet_ww, loud_ww = pair()
            print(f"  when_waiting: {quiet_ww:,.0f} jobs/s alone, {loud_ww:,.0f} jobs/s with listeners")
        rows = [
            Row(
                "8. enqueue rate with 16 listeners / none (default mode)",
                fmt_rate(loud),
                fmt_rate(quiet),
                f"{ratio(loud, quiet):.0%}",
                ">= 85%",
                ratio(loud, quiet) >= 0.85,
            )
        ]
        if modes:
            r = ratio(loud_ww, quiet_ww)
            row = Row(
                "8. the same, queue notify mode 'when_waiting'",
                fmt_rate(loud_ww),
                fmt_rate(quiet_ww),
                f"{r:.0%}",
                ">= 85%",
                r >= 0.85,
            )
        else:
            row = Row("8. the same, queue notify mode 'when_waiting'", NA)
        rows.append(row)
        rows.append(
            Row(
                "8. yardstick INSERT + NOTIFY, 16 bare LISTEN connections / none",
                fmt_rate(loud_ys),
                fmt_rate(quiet_ys),
                f"{ratio(loud_ys, quiet_ys):.0%}",
            )
        )
        description = (
            "8 producer processes, one oq_enqueue per transaction, 5 s; with 16 idle AsyncWorkers (LISTEN "
            "openqueue, another queue) vs with no listener. The yardstick column is the rate with no "
            "listener. The info row is the same measurement for a hand-rolled queue: the yardstick's "
            "INSERT and a pg_notify in one transaction, with 16 bare `LISTEN yardstick` connections (2 "
            "processes x 8 threads, each only reading its notifications) vs none."
        )
        report("8. NOTIFY cost", description, rows, dsn)


if __name__ == "__main__":
    main()
