"""Schema version 2's layout for churn: HOT heartbeats, finished-job counters, bounded purges."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
import pytest

from . import helpers
from .helpers import (
    ack,
    ack_many,
    cancel,
    enqueue,
    enqueue_batch,
    expire_lease,
    heartbeat,
    job,
    lease,
    lease_one,
    make_due,
    nack,
    purge,
    reap,
    replay,
    stats,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


# --- heartbeats are HOT -------------------------------------------------------------------


def _hot_updates(dsn: str) -> tuple[int, int]:
    """(n_tup_upd, n_tup_hot_upd) of live_jobs, read from a fresh session."""
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("select pg_stat_clear_snapshot()")
        row = other.execute(
            "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables"
            " where relid = 'openqueue.live_jobs'::regclass"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _flush_stats(conn: psycopg.Connection) -> None:
    if conn.info.server_version >= 150000:
        conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")  # the flush happens when this backend goes idle


def test_heartbeats_are_hot_updates(conn, dsn):
    enqueue_batch(conn, "q", [{"n": n} for n in range(3)])
    held = lease(conn, "q", batch_size=3)
    _flush_stats(conn)
    deadline = time.monotonic() + 10
    before = _hot_updates(dsn)
    beats = 0
    # 30 new row versions fit on the jobs' page even if pruning cannot run (an
    # old snapshot elsewhere): HOT then depends only on which columns change.
    for _ in range(10):
        for h in held:
            assert heartbeat(conn, h["id"], h["lease_token"], lease_seconds=60) is not None
            beats += 1
    _flush_stats(conn)
    while True:
        after = _hot_updates(dsn)
        if after[0] - before[0] >= beats or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    updates, hot = after[0] - before[0], after[1] - before[1]
    assert updates == beats
    assert hot == beats, f"{hot} of {beats} heartbeats were HOT"


def test_no_index_covers_lease_expires_at(conn):
    """What makes heartbeats HOT: lease_expires_at is in no index key or predicate."""
    rows = conn.execute(
        "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index"
        " where indrelid = 'openqueue.live_jobs'::regclass"
    ).fetchall()
    assert rows
    for name, definition in rows:
        assert "lease_expires_at" not in definition, (name, definition)


# --- due and scheduled jobs ---------------------------------------------------------------


def test_scheduled_and_backing_off_jobs_keep_their_contract_status(conn):
    scheduled = helpers.scalar(
        conn,
        "oq_enqueue",
        queue_name="q",
        payload={},
        run_at=helpers.db_now(conn) + timedelta(hours=1),
    )
    failing = enqueue(conn, "q")
    held = lease_one(conn, "q")
    assert held["id"] == failing
    assert nack(conn, failing, held["lease_token"], retry_in=timedelta(hours=1)) == "failed"
    assert job(conn, scheduled)["status"] == "pending"
    assert job(conn, failing)["status"] == "failed"
    assert lease(conn, "q") == []
    # Their time comes (moved through the view): still pending / failed until leased.
    make_due(conn, scheduled)
    make_due(conn, failing)
    assert job(conn, scheduled)["status"] == "pending"
    assert job(conn, failing)["status"] == "failed"
    assert stats(conn)["q"]["oldest_due_at"] is not None
    assert {r["id"] for r in lease(conn, "q", batch_size=5)} == {scheduled, failing}


def test_moving_run_at_back_into_the_future_unschedules_a_due_job(conn):
    job_id = enqueue(conn, "q")
    conn.execute("update openqueue.jobs set run_at = now() + interval '1 hour' where id = %s", [job_id])
    assert lease(conn, "q") == []
    assert conn.execute("select openqueue.oq_next_run_at('{q}')").fetchone()[0] == job(conn, job_id)["run_at"]
    make_due(conn, job_id)
    assert lease_one(conn, "q")["id"] == job_id


def test_reclaimed_and_replayed_jobs_are_due_at_once(conn):
    first, second = enqueue_batch(conn, "q", [{}, {}])
    held = lease(conn, "q", batch_size=2)
    expire_lease(conn, first)
    assert reap(conn) == 1
    assert nack(conn, second, held[1]["lease_token"], retry=False) == "dead"
    assert replay(conn, second) is True
    assert sorted(r["id"] for r in lease(conn, "q", batch_size=5)) == [first, second]


# --- finished counters --------------------------------------------------------------------

TRUTH = """
    select queue_name,
           count(*) filter (where status = 'completed') as completed,
           count(*) filter (where status = 'dead') as dead,
           count(*) filter (where status = 'cancelled') as cancelled
    from openqueue.finished_jobs group by queue_name
"""


def _assert_counts_exact(conn):
    truth = {r[0]: r[1:] for r in conn.execute(TRUTH).fetchall()}
    got = {
        name: (row["completed"], row["dead"], row["cancelled"])
        for name, row in stats(conn).items()
        if (row["completed"], row["dead"], row["cancelled"]) != (0, 0, 0)
    }
    assert got == truth


def test_stats_counts_stay_exact_through_every_path(conn):
    _assert_counts_exact(conn)
    conn.execute("select openqueue.oq_configure_queue('a', max_attempts => 1)")
    ids = enqueue_batch(conn, "a", [{"n": n} for n in range(12)])
    enqueue_batch(conn, "b", [{"n": n} for n in range(3)])
    held = {r["id"]: r["lease_token"] for r in lease(conn, "a", batch_size=12)}
    assert ack(conn, ids[0], held[ids[0]]) is True
    _assert_counts_exact(conn)
    assert ack_many(conn, ids[1:4], [held[i] for i in ids[1:4]]) == ids[1:4]
    _assert_counts_exact(conn)
    assert nack(conn, ids[4], held[ids[4]], retry=False) == "dead"
    assert cancel(conn, ids[5]) is True
    _assert_counts_exact(conn)
    for i in ids[6:8]:
        expire_lease(conn, i)
    assert reap(conn) == 2
    assert job(conn, ids[6])["status"] == "dead"
    _assert_counts_exact(conn)
    assert replay(conn, ids[4]) is True
    _assert_counts_exact(conn)
    b_held = lease(conn, "b", batch_size=3)
    assert ack_many(conn, [r["id"] for r in b_held], [r["lease_token"] for r in b_held]) != []
    _assert_counts_exact(conn)
    conn.execute(
        "update openqueue.jobs set finished_at = now() - interval '2 days' where finished_at is not null"
    )
    _assert_counts_exact(conn)
    assert purge(conn, timedelta(days=1)) > 0
    _assert_counts_exact(conn)
    conn.execute("delete from openqueue.jobs where id = %s", [ids[5]])
    _assert_counts_exact(conn)
    # Rows written by hand are counted too.
    conn.execute(
        "insert into openqueue.finished_jobs (id, queue_name, status, priority, run_at, attempts,"
        " max_attempts, payload, created_at) select nextval('openqueue.job_id_seq'), 'hand', 'dead',"
        " 0, now(), 1, 1, '{}', now() from generate_series(1, 5)"
    )
    _assert_counts_exact(conn)
    assert purge(conn, timedelta(0), include_dead=True) > 0
    _assert_counts_exact(conn)
    assert "hand" not in stats(conn)  # a queue with no jobs left and no settings is gone


def test_finished_counts_are_sharded_by_backend(conn, dsn):
    """Two sessions acking at once (in open transactions) do not wait on one counter row."""
    sessions = []
    while len({s.info.backend_pid % 16 for s in sessions}) < 2:
        s = psycopg.connect(dsn)
        if any(o.info.backend_pid % 16 == s.info.backend_pid % 16 for o in sessions):
            s.close()
            continue
        sessions.append(s)
    try:
        enqueue_batch(conn, "q", [{}, {}])
        held = lease(conn, "q", batch_size=2)
        for s, h in zip(sessions, held, strict=True):
            s.execute("set lock_timeout = '2s'")
            assert ack(s, h["id"], h["lease_token"]) is True  # both transactions stay open
        for s in sessions:
            s.commit()
        assert stats(conn)["q"]["completed"] == 2
        shards = conn.execute(
            "select count(*) from openqueue.finished_counts where queue_name = 'q' and jobs <> 0"
        ).fetchone()[0]
        assert shards == 2
    finally:
        for s in sessions:
            s.close()


def test_stats_do_not_scan_finished_jobs(conn):
    plan = "\n".join(r[0] for r in conn.execute("explain select * from openqueue.oq_stats()").fetchall())
    assert "finished_jobs" not in plan  # a function scan; the body reads finished_counts
    body = conn.execute(
        "select prosrc from pg_proc where oid = 'openqueue.oq_stats()'::regprocedure"
    ).fetchone()[0]
    assert "finished_jobs" not in body and "finished_counts" in body


# --- purge in batches ---------------------------------------------------------------------


def _finished(conn, queue: str, n: int, age: str, **kw) -> list[int]:
    ids = enqueue_batch(conn, queue, [{"n": i} for i in range(n)])
    held = lease(conn, queue, batch_size=n)
    assert ack_many(conn, [r["id"] for r in held], [r["lease_token"] for r in held]) == [
        r["id"] for r in held
    ]
    conn.execute(
        "update openqueue.jobs set finished_at = now() - %s::interval + make_interval(secs => id)"
        " where id = any(%s)",
        [age, ids],
    )
    return ids


def purge_batch(conn, older_than, **kw) -> int:
    return helpers.scalar(conn, "oq_purge_batch", older_than=older_than, **kw)


def test_purge_batch_deletes_at_most_max_rows_oldest_first(conn):
    ids = _finished(conn, "q", 25, "2 days")
    recent = _finished(conn, "q", 2, "1 minute")
    assert purge_batch(conn, timedelta(days=1), max_rows=10) == 10
    left = [r[0] for r in conn.execute("select id from openqueue.finished_jobs order by id")]
    assert left == ids[10:] + recent
    assert purge_batch(conn, timedelta(days=1), max_rows=10) == 10
    assert purge_batch(conn, timedelta(days=1), max_rows=10) == 5
    assert purge_batch(conn, timedelta(days=1), max_rows=10) == 0
    assert [r[0] for r in conn.execute("select id from openqueue.finished_jobs order by id")] == recent
    _assert_counts_exact(conn)


def test_purge_batch_frees_idempotency_keys_and_respects_include_dead(conn):
    keyed = enqueue(conn, "q", idempotency_key="k")
    assert ack(conn, keyed, lease_one(conn, "q")["lease_token"]) is True
    dead = enqueue(conn, "q")
    assert nack(conn, dead, lease_one(conn, "q")["lease_token"], retry=False) == "dead"
    conn.execute("update openqueue.jobs set finished_at = now() - interval '2 days'")
    assert purge_batch(conn, timedelta(days=1)) == 1
    assert job(conn, dead)["status"] == "dead"
    assert enqueue(conn, "q", idempotency_key="k") != keyed  # the key is free again
    assert purge_batch(conn, timedelta(days=1), include_dead=True, max_rows=1) == 1
    assert conn.execute("select count(*) from openqueue.finished_jobs").fetchone() == (0,)
    _assert_counts_exact(conn)


def test_purge_deletes_everything_matching_in_several_batches(conn):
    conn.execute(
        "insert into openqueue.finished_jobs (id, queue_name, status, priority, run_at, attempts,"
        " max_attempts, payload, created_at, finished_at) select nextval('openqueue.job_id_seq'), 'big',"
        " 'completed', 0, now(), 1, 1, '{}', now(), now() - interval '2 days' from generate_series(1, 25000)"
    )
    assert purge(conn, timedelta(days=1)) == 25000
    assert conn.execute("select count(*) from openqueue.finished_jobs").fetchone() == (0,)
    _assert_counts_exact(conn)


@pytest.mark.parametrize(
    ("args", "sqlstate", "argument"),
    [
        ({"older_than": None}, "22004", "older_than"),
        ({"older_than": timedelta(days=-1)}, "22023", "older_than"),
        ({"older_than": timedelta(days=1), "max_rows": None}, "22004", "max_rows"),
        ({"older_than": timedelta(days=1), "max_rows": 0}, "22023", "max_rows"),
        ({"older_than": timedelta(days=1), "max_rows": 1_000_001}, "22023", "max_rows"),
    ],
)
def test_purge_batch_bad_input(conn, args, sqlstate, argument):
    _finished(conn, "q", 2, "2 days")
    before = helpers.snapshot(conn)
    with pytest.raises(psycopg.Error) as excinfo:
        purge_batch(conn, **args)
    assert excinfo.value.sqlstate == sqlstate
    assert argument in excinfo.value.diag.message_primary
    assert helpers.snapshot(conn) == before


def test_purge_batch_limits_are_inclusive(conn):
    assert purge_batch(conn, timedelta(0), max_rows=1) == 0
    assert purge_batch(conn, timedelta(0), max_rows=1_000_000) == 0


def test_wrong_token_in_a_batch_leaves_the_counters_alone(conn):
    enqueue(conn, "q")
    held = lease_one(conn, "q")
    assert ack_many(conn, [held["id"]], [uuid.uuid4()]) == []
    assert stats(conn)["q"]["completed"] == 0
