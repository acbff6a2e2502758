"""The dashboard's reads of the last hour use the finished_at index, not a scan of every finished job."""

from __future__ import annotations

import psycopg
import pytest

from openqueue_py.dashboard import queries


@pytest.mark.parametrize("name", ["_THROUGHPUT", "_LAST_HOUR"])
def test_last_hour_reads_finished_jobs_through_the_finished_at_index(
    conn: psycopg.Connection, name: str
) -> None:
    conn.execute("set enable_seqscan = off")
    plan = "\n".join(row[0] for row in conn.execute("explain " + getattr(queries, name)).fetchall())
    assert "finished_jobs_finished_at" in plan, plan
    assert "Seq Scan on finished_jobs" not in plan, plan


def test_the_dead_list_reads_finished_jobs_in_finished_at_order(conn: psycopg.Connection) -> None:
    conn.execute("set enable_seqscan = off")
    conn.execute("set enable_sort = off")
    plan = "\n".join(
        row[0]
        for row in conn.execute(
            f"explain select {queries.JOB_COLUMNS} from openqueue.jobs where status = 'dead' "
            "order by finished_at desc, id desc limit 100"
        ).fetchall()
    )
    assert "live_jobs" not in plan, plan  # excluded by the status constraint
