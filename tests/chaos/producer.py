"""A chaos producer process: ``python -m tests.chaos.producer --dsn DSN --out FILE --prefix P``.

It enqueues one job at a time with an idempotency key unique to the logical
job (``<prefix>-<n>``). On a connection error it reconnects and retries with
the SAME key until the database acknowledges the commit; only then does it
append ``key<TAB>job id`` to ``--out`` (flushed). SIGTERM stops it after the
key in hand is acknowledged. At exit it prints one JSON line of counters.
With ``--queues a,b,c`` (Citus mode) each key goes to one of them, chosen
from the key (so a retry goes to the same queue).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import time
import zlib
from types import FrameType

import psycopg
from psycopg.types.json import Jsonb

from openqueue_py.worker.connections import node_unavailable

QUEUE = "chaos"
ENQUEUE = (
    "select openqueue.oq_enqueue(queue_name => %s, payload => %s, max_attempts => %s, idempotency_key => %s)"
)
# A key not acknowledged within this time is reported and the producer exits non-zero.
GIVE_UP_S = 240.0


class Producer:
    def __init__(self, dsn: str, prefix: str, max_attempts: int, queues: tuple[str, ...] = (QUEUE,)) -> None:
        self.dsn = dsn
        self.queues = queues
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.conn: psycopg.Connection | None = None
        self.retries = 0  # enqueue calls that failed and were retried
        self.keys_retried = 0  # logical jobs that needed more than one call
        self.null_ids = 0  # oq_enqueue answered NULL (never expected)
        self.node_lost = 0  # of the retries: Citus reported a node lost (XX000)

    def enqueue_until_acked(self, key: str) -> int:
        """The job id for ``key``, once its commit is acknowledged."""
        deadline = time.monotonic() + GIVE_UP_S
        failed = False
        queue = queue_of(key, self.queues)
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.dsn, connect_timeout=5)
                row = self.conn.execute(
                    ENQUEUE, (queue, Jsonb({"key": key}), self.max_attempts, key)
                ).fetchone()
                self.conn.commit()
            except psycopg.Error as exc:
                # A lost connection, or on Citus a node lost at commit (XX000, see
                # openqueue_py.worker.connections.NodeUnavailable): the same key again.
                if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                    if not node_unavailable(exc):
                        raise
                    self.node_lost += 1
                self._drop()
                self.retries += 1
                if not failed:
                    failed = True
                    self.keys_retried += 1
                if time.monotonic() > deadline:
                    raise SystemExit(f"producer {self.prefix}: key {key} not acknowledged: {exc}") from exc
                time.sleep(random.uniform(0.02, 0.2))
                continue
            if row is None or row[0] is None:
                self.null_ids += 1
                raise SystemExit(f"producer {self.prefix}: oq_enqueue returned NULL for key {key}")
            return int(row[0])

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


def queue_of(key: str, queues: tuple[str, ...]) -> str:
    """The queue a key is enqueued into: fixed by the key, spread evenly."""
    return queues[zlib.crc32(key.encode()) % len(queues)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--rate", type=float, default=20.0, help="logical jobs per second")
    parser.add_argument("--max-attempts", type=int, default=100)
    parser.add_argument("--queues", default=QUEUE, help="comma-separated queue names")
    args = parser.parse_args(argv)

    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    producer = Producer(args.dsn, args.prefix, args.max_attempts, tuple(args.queues.split(",")))
    acked = 0
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    with open(args.out, "a", encoding="utf-8") as out:
        while not stopping:
            key = f"{args.prefix}-{acked}"
            job_id = producer.enqueue_until_acked(key)
            out.write(f"{key}\t{job_id}\n")
            out.flush()
            acked += 1
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    producer._drop()
    counters = {
        "prefix": args.prefix,
        "acked": acked,
        "retries": producer.retries,
        "keys_retried": producer.keys_retried,
        "null_ids": producer.null_ids,
        "node_lost": producer.node_lost,
    }
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
