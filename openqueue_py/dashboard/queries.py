"""The dashboard's reads: ``oq_stats()`` and ``openqueue.jobs``, never ``lease_token``.

Every statement is read-only and bounded: counts come from ``oq_stats()``
(counters, not a scan), the last hour from the ``finished_at`` index and the
live jobs, lists from an index in their order and a ``LIMIT``. A role holding
``openqueue_admin`` may run all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

STATES = ("pending", "processing", "failed", "completed", "dead", "cancelled")

# The job columns a page shows: every column of openqueue.jobs except lease_token.
JOB_COLUMNS = (
    "id, queue_name, payload, status, priority, run_at, attempts, max_attempts, leased_by, "
    "lease_expires_at, result, errors, idempotency_key, created_at, finished_at"
)

# How many minutes the throughput chart covers.
WINDOW_MINUTES = 60


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue as the overview shows it."""

    name: str
    counts: dict[str, int]
    oldest_due_age: float | None  # seconds; None when no job is due
    paused: bool | None  # None: the schema has no pause (oq_stats without the column)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Minute:
    """One minute of the throughput chart."""

    start: datetime
    completed: int
    failures: int


async def queues(conn: psycopg.AsyncConnection) -> list[QueueRow]:
    """Every queue of ``oq_stats()``, by name, with the age of its oldest due job."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "select s.*, extract(epoch from now() - s.oldest_due_at)::float8 as oldest_due_age "
            "from openqueue.oq_stats() as s order by s.queue_name"
        )
        rows = await cur.fetchall()
    return [
        QueueRow(
            name=row["queue_name"],
            counts={state: int(row[state]) for state in STATES},
            oldest_due_age=max(row["oldest_due_age"], 0.0) if row["oldest_due_age"] is not None else None,
            paused=row.get("paused"),
        )
        for row in rows
    ]


# Completed jobs per minute come from finished_at (an index); failures from the
# "at" of each error entry, among the jobs that can hold one from the last
# hour: the live ones and those finished within it.
_SINCE = f"(date_trunc('minute', now()) - interval '{WINDOW_MINUTES - 1} minutes')"
_THROUGHPUT = f"""
with minutes as (
    select generate_series({_SINCE}, date_trunc('minute', now()), interval '1 minute') as minute
),
done as (
    select date_trunc('minute', j.finished_at) as minute, count(*) as n
    from openqueue.jobs as j
    where j.finished_at >= {_SINCE} and j.status = 'completed'
    group by 1
),
failed as (
    select date_trunc('minute', e.at) as minute, count(*) as n
    from (
        select j.errors from openqueue.jobs as j where j.finished_at >= {_SINCE}
        union all
        select j.errors from openqueue.jobs as j where j.finished_at is null and j.errors <> '[]'
    ) as j,
        lateral (select (x.value ->> 'at')::timestamptz as at from jsonb_array_elements(j.errors) as x) as e
    where e.at >= {_SINCE}
    group by 1
)
select m.minute, coalesce(d.n, 0)::int as completed, coalesce(f.n, 0)::int as failures
from minutes as m
left join done as d on d.minute = m.minute
left join failed as f on f.minute = m.minute
order by m.minute
"""


async def throughput(conn: psycopg.AsyncConnection) -> list[Minute]:
    """The last WINDOW_MINUTES minutes, oldest first: jobs completed and attempts failed in each."""
    cur = await conn.execute(_THROUGHPUT)
    return [Minute(start, completed, failures) for start, completed, failures in await cur.fetchall()]


async def dead_jobs(conn: psycopg.AsyncConnection, queue: str | None, limit: int) -> list[dict[str, Any]]:
    """Dead jobs, most recently dead first (optionally of one queue), with their error history."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"select {JOB_COLUMNS} from openqueue.jobs "
            "where status = 'dead' and (%(queue)s::text is null or queue_name = %(queue)s::text) "
            "order by finished_at desc, id desc limit %(limit)s",
            {"queue": queue, "limit": limit},
        )
        return await cur.fetchall()


async def recent_jobs(
    conn: psycopg.AsyncConnection, queue: str, state: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest jobs of a queue (optionally in one state), newest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"select {JOB_COLUMNS} from openqueue.jobs "
            "where queue_name = %(queue)s and (%(state)s::text is null or status = %(state)s::text) "
            "order by id desc limit %(limit)s",
            {"queue": queue, "state": state, "limit": limit},
        )
        return await cur.fetchall()


async def job(conn: psycopg.AsyncConnection, job_id: int) -> dict[str, Any] | None:
    """One job by id, or None."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"select {JOB_COLUMNS} from openqueue.jobs where id = %s::bigint", (job_id,))
        return await cur.fetchone()


_LAST_HOUR = """
with j as (
    select j.queue_name, j.status, j.finished_at, j.errors
    from openqueue.jobs as j where j.finished_at >= now() - interval '1 hour'
    union all
    select j.queue_name, j.status, j.finished_at, j.errors
    from openqueue.jobs as j where j.finished_at is null and j.errors <> '[]'
)
select
    j.queue_name,
    count(*) filter (where j.status = 'completed' and j.finished_at >= now() - interval '1 hour'),
    coalesce(sum((
        select count(*) from jsonb_array_elements(j.errors) as x
        where (x.value ->> 'at')::timestamptz >= now() - interval '1 hour'
    )), 0)
from j
group by j.queue_name
"""


async def completed_last_hour(conn: psycopg.AsyncConnection) -> dict[str, tuple[int, int]]:
    """Per queue: (jobs completed, attempts failed) over the last 60 minutes, to the second."""
    cur = await conn.execute(_LAST_HOUR)
    return {queue: (int(done), int(failures)) for queue, done, failures in await cur.fetchall()}
