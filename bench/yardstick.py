"""The yardstick: a hand-rolled SKIP LOCKED queue, and the leanest sensible loop that drives it.

Every figure of issue 6 is a ratio against this, run in the same process and
minute. The queue is one table in schema ``yardstick`` with no history, no
fencing token, no attempts limit, no notifications:

* lease: ONE statement, ``UPDATE ... WHERE id IN (SELECT ... ORDER BY
  priority DESC, run_at, id LIMIT k FOR UPDATE SKIP LOCKED) RETURNING``; it
  sets ``locked_until`` (a visibility timeout, like pgmq's) and bumps
  ``attempts``, neither of them indexed, so the update can be HOT;
* ack: ONE ``DELETE``, ``WHERE id = ANY(ids)`` for a batch.

The loop (``drain``): psycopg 3, autocommit, no pool, no threads beyond the
slots. Each process runs ``slots`` slots; a slot is lease -> handle (a no-op
that counts) -> ack.

* batched fetch (``batch=None``): with no-op handlers every slot is free
  again when the batch is acked, so one loop on one connection per process
  leases k = free slots = ``slots`` jobs, handles them, acks them all with
  one DELETE. Two statements (two commits) per ``slots`` jobs.
* fetch-one (``batch=1``): ``slots`` threads per process, each with its own
  connection, each leasing one job and deleting it. Two statements per job.

The same loop also drives OpenQueue's SQL (``flavor="openqueue_sql"``:
``oq_lease`` and ``oq_ack_many``, or one ``oq_ack`` per job in one statement
when ``oq_ack_many`` is not installed) so that a figure can tell the cost of
the SQL apart from the cost of the ``Worker``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg

SCHEMA = """
create schema if not exists yardstick;
create table if not exists yardstick.jobs (
    id bigserial primary key,
    queue text not null,
    priority integer not null default 0,
    run_at timestamptz not null default now(),
    attempts integer not null default 0,
    locked_until timestamptz,
    payload jsonb not null
);
create index if not exists jobs_lease_order on yardstick.jobs (queue, priority desc, run_at, id);
"""

LEASE = (
    "update yardstick.jobs set locked_until = now() + interval '30 seconds', attempts = attempts + 1 "
    "where id in (select id from yardstick.jobs where queue = %s and run_at <= now() "
    "and (locked_until is null or locked_until < now()) "
    "order by priority desc, run_at, id limit %s for update skip locked) "
    "returning id, payload"
)
ACK_ONE = "delete from yardstick.jobs where id = %s"
ACK_MANY = "delete from yardstick.jobs where id = any(%s)"
ENQUEUE = "insert into yardstick.jobs (queue, payload) values (%s, %s) returning id"
# The same, with the wake-up a queue owes its listeners (contract: NOTIFY on every enqueue).
ENQUEUE_NOTIFY = (
    "with j as (insert into yardstick.jobs (queue, payload) values (%s, %s) returning id, queue) "
    "select j.id, pg_notify('yardstick', j.queue) from j"
)
ENQUEUE_BATCH = (
    "insert into yardstick.jobs (queue, payload) "
    "select %s, e.value from jsonb_array_elements(%s) as e returning id"
)

OQ_LEASE = "select id, lease_token from openqueue.oq_lease(%s, %s, null, %s)"
OQ_ACK_ONE = "select openqueue.oq_ack(%s, %s)"
OQ_ACK_MANY = "select count(*) from openqueue.oq_ack_many(%s::bigint[], %s::uuid[])"
# Without oq_ack_many: one oq_ack per job, all in one statement and one commit.
OQ_ACK_UNNEST = (
    "select count(*) from unnest(%s::bigint[], %s::uuid[]) as t(id, token) "
    "where openqueue.oq_ack(t.id, t.token)"
)


def setup(conn: psycopg.Connection) -> None:
    conn.execute(SCHEMA)


def preload(conn: psycopg.Connection, queue: str, jobs: int) -> None:
    """``jobs`` due jobs with the same payloads as common.preload gives OpenQueue."""
    conn.execute(
        "insert into yardstick.jobs (queue, payload) "
        "select %s, jsonb_build_object('n', g) from generate_series(1, %s) as g",
        (queue, jobs),
    )


@dataclass(frozen=True)
class Tally:
    """What one process did: jobs handled, monotonic time of its first and last ack."""

    handled: int
    first_ack: float
    last_ack: float


class _Loop:
    """One connection's lease -> handle -> ack loop; stops at the first empty lease."""

    def __init__(self, dsn: str, flavor: str, queue: str, batch: int) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.queue = queue
        self.batch = batch
        self.handled = 0
        self.first_ack = 0.0
        self.last_ack = 0.0
        if flavor == "yardstick":
            self.lease_sql, self.lease_args = LEASE, (queue, batch)
        else:
            self.lease_sql, self.lease_args = OQ_LEASE, (queue, f"lean-{id(self)}", batch)
        self.flavor = flavor
        if flavor == "openqueue_sql" and batch > 1:
            row = self.conn.execute(
                "select exists (select from pg_proc "
                "where pronamespace = 'openqueue'::regnamespace and proname = 'oq_ack_many')"
            ).fetchone()
            self.ack_many = OQ_ACK_MANY if row and row[0] else OQ_ACK_UNNEST

    def run(self) -> None:
        cur = self.conn.cursor()
        while True:
            rows = cur.execute(self.lease_sql, self.lease_args).fetchall()
            if not rows:
                break
            for _row in rows:
                self.handled += 1  # the no-op handler
            if self.flavor == "yardstick":
                if self.batch == 1:
                    cur.execute(ACK_ONE, (rows[0][0],))
                else:
                    cur.execute(ACK_MANY, ([row[0] for row in rows],))
            elif self.batch == 1:
                cur.execute(OQ_ACK_ONE, rows[0])
            else:
                cur.execute(self.ack_many, ([row[0] for row in rows], [row[1] for row in rows]))
            self.last_ack = time.monotonic()
            if not self.first_ack:
                self.first_ack = self.last_ack
        self.conn.close()


def drain(dsn: str, flavor: str, queue: str, slots: int, batch: int | None) -> Tally:
    """Drain ``queue`` from this process with ``slots`` slots (see the module docstring)."""
    if batch is None or batch > 1:
        loops = [_Loop(dsn, flavor, queue, min(batch or slots, slots))]
    else:
        loops = [_Loop(dsn, flavor, queue, 1) for _ in range(slots)]
    threads = [threading.Thread(target=loop.run) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    acked = [loop for loop in loops if loop.handled]
    return Tally(
        handled=sum(loop.handled for loop in loops),
        first_ack=min((loop.first_ack for loop in acked), default=0.0),
        last_ack=max((loop.last_ack for loop in acked), default=0.0),
    )


def drain_process(dsn: str, flavor: str, queue: str, slots: int, batch: int | None, out) -> None:
    """multiprocessing target: drain, then put the Tally on ``out``."""
    out.put(drain(dsn, flavor, queue, slots, batch))


def main() -> None:
    """``python -m bench.yardstick --dsn DSN --queue Q [--slots 8] [--batch 1]``: drain Q in this process."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="jobs per lease (default: free slots)")
    parser.add_argument("--flavor", choices=["yardstick", "openqueue_sql"], default="yardstick")
    args = parser.parse_args()
    print(drain(args.dsn, args.flavor, args.queue, args.slots, args.batch))


if __name__ == "__main__":
    main()
