"""Flow control: oq_pause_queue, oq_resume_queue, oq_set_queue_limits (CONTRACT.md section 8)."""

from __future__ import annotations

import random
import threading
from datetime import timedelta

import psycopg
import pytest

from openqueue_py.migrate import load_migrations

from . import helpers
from .helpers import (
    Background,
    ack,
    cancel,
    enqueue,
    enqueue_batch,
    expire_lease,
    heartbeat,
    lease,
    nack,
    reap,
    replay,
    stats,
    wait_until_blocked,
)


def pause(conn, queue_name: str) -> bool:
    return conn.execute("select openqueue.oq_pause_queue(queue_name => %s)", [queue_name]).fetchone()[0]


def resume(conn, queue_name: str) -> bool:
    return conn.execute("select openqueue.oq_resume_queue(queue_name => %s)", [queue_name]).fetchone()[0]


def set_limits(conn, queue_name: str, **kw) -> None:
    types = {"max_running": "integer", "rate_limit": "integer", "rate_period": "interval"}
    args = "".join(f", {k} => %({k})s::{types[k]}" for k in kw)
    conn.execute(f"select openqueue.oq_set_queue_limits(queue_name => %(q)s{args})", {"q": queue_name, **kw})


def received(listener, conn) -> list[str]:
    """Payloads on channel openqueue so far, up to a fresh sentinel on each node (commit order)."""
    return [payload for _, payload in listener.received()]


@pytest.fixture
def listener(dsn):
    """LISTEN openqueue on the server, and on Citus on every node (contract section 10)."""
    node_listener = helpers.NodeListener(dsn, "openqueue")
    try:
        yield node_listener
    finally:
        node_listener.close()


# --- pause and resume ----------------------------------------------------------------------


def test_pause_and_resume_return_whether_the_state_changed(conn):
    assert pause(conn, "q") is True
    assert pause(conn, "q") is False
    assert resume(conn, "q") is True
    assert resume(conn, "q") is False
    assert resume(conn, "never_seen") is False


def test_a_queue_may_be_paused_before_it_has_jobs(conn):
    assert pause(conn, "early") is True
    assert stats(conn)["early"]["paused"] is True
    enqueue(conn, "early")
    assert lease(conn, "early") == []
    assert lease(conn, "early", lease_seconds=30, batch_size=5) == []
    assert resume(conn, "early") is True
    assert len(lease(conn, "early")) == 1


def test_lease_returns_nothing_while_paused_whatever_the_arguments(conn):
    enqueue_batch(conn, "q", [1, 2, 3])
    pause(conn, "q")
    assert lease(conn, "q") == []
    assert lease(conn, "q", lease_seconds=60, batch_size=10) == []
    enqueue(conn, "other")
    assert len(lease(conn, "other")) == 1  # other queues are not paused
    resume(conn, "q")
    assert len(lease(conn, "q", batch_size=10)) == 3


def test_everything_else_works_while_paused(conn):
    running = [enqueue(conn, "q") for _ in range(4)]
    leased = lease(conn, "q", batch_size=4)
    assert [r["id"] for r in leased] == running
    pause(conn, "q")
    # enqueue
    new_id = enqueue(conn, "q")
    assert enqueue_batch(conn, "q", [1, 2])
    # heartbeat and ack of a lease held before the pause
    first, second, third, fourth = leased
    assert heartbeat(conn, first["id"], first["lease_token"]) is not None
    assert ack(conn, first["id"], first["lease_token"]) is True
    # nack
    assert nack(conn, second["id"], second["lease_token"], retry=False) == "dead"
    # reap
    expire_lease(conn, third["id"])
    assert reap(conn) == 1
    # cancel and replay
    assert cancel(conn, fourth["id"]) is True
    assert replay(conn, fourth["id"]) is True
    assert cancel(conn, new_id) is True
    s = stats(conn)["q"]
    assert (s["completed"], s["dead"], s["processing"], s["paused"]) == (1, 1, 0, True)
    assert lease(conn, "q", batch_size=10) == []


def test_resume_notifies_when_the_queue_has_due_jobs(conn, listener):
    pause(conn, "q")
    enqueue(conn, "q")
    received(listener, conn)  # the enqueue's own notification
    assert resume(conn, "q") is True
    assert received(listener, conn) == ["q"]


def test_resume_of_a_when_waiting_queue_notifies_too(conn, listener):
    conn.execute("select openqueue.oq_set_queue_notify('q', 'when_waiting')")
    pause(conn, "q")
    enqueue(conn, "q")
    assert received(listener, conn) == []  # nobody waits: the enqueue was silent
    resume(conn, "q")
    assert received(listener, conn) == ["q"]


def test_resume_without_due_jobs_or_a_pause_does_not_notify(conn, listener):
    pause(conn, "q")
    enqueue(conn, "q", run_at=conn.execute("select now() + interval '1 hour'").fetchone()[0])
    received(listener, conn)
    assert resume(conn, "q") is True
    assert resume(conn, "q") is False
    assert received(listener, conn) == []


def test_resume_notifies_on_commit_only(dsn, conn, listener):
    pause(conn, "q")
    enqueue(conn, "q")
    received(listener, conn)
    with psycopg.connect(dsn) as admin:
        resume(admin, "q")
        assert received(listener, conn) == []
        admin.commit()
    assert received(listener, conn) == ["q"]


def test_stats_has_a_last_column_paused(conn):
    cur = conn.execute("select * from openqueue.oq_stats()")
    assert cur.description[-1].name == "paused"
    enqueue(conn, "a")
    pause(conn, "b")
    assert {r["queue_name"]: r["paused"] for r in stats(conn).values()} == {"a": False, "b": True}
    resume(conn, "b")
    assert stats(conn)["b"]["paused"] is False


# --- bad input -------------------------------------------------------------------------------


def _error(conn, sql: str, params=()) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    return raised.value


def _queues(conn):
    return conn.execute("select * from openqueue.queues order by queue_name").fetchall()


@pytest.mark.parametrize(
    ("args", "sqlstate", "argument"),
    [
        ("queue_name => 'q', max_running => 0", "22023", "max_running"),
        ("queue_name => 'q', max_running => -5", "22023", "max_running"),
        ("queue_name => 'q', rate_limit => 0", "22023", "rate_limit"),
        ("queue_name => 'q', rate_limit => -1", "22023", "rate_limit"),
        ("queue_name => 'q', rate_limit => 5, rate_period => '0 seconds'", "22023", "rate_period"),
        ("queue_name => 'q', rate_limit => 5, rate_period => '-1 second'", "22023", "rate_period"),
        ("queue_name => 'q', rate_period => '1 month -30 days'", "22023", "rate_period"),
        ("queue_name => null, max_running => 1", "22004", "queue_name"),
        ("queue_name => '', max_running => 1", "22023", "queue_name"),
        ("queue_name => 'bad name', max_running => 1", "22023", "queue_name"),
        (f"queue_name => '{'x' * 129}', max_running => 1", "22023", "queue_name"),
    ],
)
def test_set_queue_limits_bad_input(conn, args, sqlstate, argument):
    set_limits(conn, "q", max_running=2)
    before = _queues(conn)
    error = _error(conn, f"select openqueue.oq_set_queue_limits({args})")
    assert error.sqlstate == sqlstate
    assert argument in str(error)
    assert _queues(conn) == before  # nothing written


@pytest.mark.parametrize("function", ["oq_pause_queue", "oq_resume_queue"])
@pytest.mark.parametrize(
    ("name", "sqlstate"), [(None, "22004"), ("", "22023"), ("a b", "22023"), ("x" * 129, "22023")]
)
def test_pause_and_resume_bad_queue_name(conn, function, name, sqlstate):
    error = _error(conn, f"select openqueue.{function}(queue_name => %s)", [name])
    assert error.sqlstate == sqlstate
    assert "queue_name" in str(error)
    assert _queues(conn) == []


def test_limit_bounds_are_inclusive(conn):
    set_limits(conn, "q", max_running=1, rate_limit=1, rate_period=timedelta(microseconds=1))
    set_limits(conn, "q", max_running=2147483647, rate_limit=2147483647)


# --- set_queue_limits sets both, exactly ---------------------------------------------------


def _limits(conn, queue_name):
    return conn.execute(
        "select max_running, rate_limit, rate_period from openqueue.queues where queue_name = %s",
        [queue_name],
    ).fetchone()


def test_set_queue_limits_sets_both_exactly(conn):
    set_limits(conn, "q", max_running=3)
    assert _limits(conn, "q") == (3, None, timedelta(seconds=1))
    set_limits(conn, "q", rate_limit=7, rate_period=timedelta(minutes=1))
    assert _limits(conn, "q") == (None, 7, timedelta(minutes=1))  # max_running is gone
    set_limits(conn, "q")
    assert _limits(conn, "q")[:2] == (None, None)
    enqueue_batch(conn, "q", list(range(20)))
    assert len(lease(conn, "q", batch_size=20)) == 20  # no limit left


def test_max_running_limits_one_session(conn):
    set_limits(conn, "q", max_running=3)
    ids = enqueue_batch(conn, "q", list(range(10)))
    first = lease(conn, "q", batch_size=2)
    assert len(first) == 2
    assert len(lease(conn, "q", batch_size=10)) == 1
    assert lease(conn, "q") == []
    assert lease(conn, "q", lease_seconds=60) == []
    ack(conn, first[0]["id"], first[0]["lease_token"])
    again = lease(conn, "q", batch_size=10)
    assert len(again) == 1
    # Lease order is kept under limits: the fourth job of the batch.
    assert again[0]["id"] == ids[3]


def test_a_lease_of_a_limited_queue_waits_for_the_one_in_progress(dsn, conn):
    set_limits(conn, "q", max_running=2)
    enqueue_batch(conn, "q", list(range(5)))
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        assert len(lease(first, "q", batch_size=2)) == 2  # transaction still open
        pid = second.info.backend_pid
        blocked = Background(lambda: lease(second, "q", batch_size=5))
        blocked.start()
        wait_until_blocked(conn, pid)
        first.commit()
        assert blocked.result() == []  # it counted the first lease's jobs


def test_repeatable_read_lease_fails_rather_than_counting_short(dsn, conn, pg_server):
    set_limits(conn, "q", max_running=2)
    enqueue_batch(conn, "q", list(range(5)))
    with psycopg.connect(dsn) as late:
        late.execute("set transaction isolation level repeatable read")
        late.execute("select 1")  # its snapshot: before the lease below
        assert len(lease(conn, "q", batch_size=2)) == 2
        if pg_server.kind == "citus":
            # Citus has no cluster-wide snapshot: the late transaction's snapshot on the worker
            # node holding q is taken by its first statement there, after the lease above, so
            # it counts the 2 running jobs and leases none: it cannot count short either.
            assert lease(late, "q", batch_size=2) == []
            return
        with pytest.raises(psycopg.errors.SerializationFailure):
            lease(late, "q", batch_size=2)


# --- max_running under concurrency ----------------------------------------------------------

LEASERS = 8
JOBS = 240
MAX_RUNNING = 3


def test_max_running_holds_at_every_instant_under_concurrency(dsn, conn):
    """Every lease and every ack also moves a side counter in the same transaction.

    The counter row is locked by each such transaction until it commits, so its
    value after each update is exactly the number of processing jobs at that
    transaction's commit, in commit order; its maximum is the maximum ever.
    The counter is the test's own: it does not rely on how oq_lease serialises.
    """
    set_limits(conn, "q", max_running=MAX_RUNNING)
    enqueue_batch(conn, "q", list(range(JOBS)))
    conn.execute("create table public.running_count (n integer not null)")
    conn.execute("insert into public.running_count values (0)")
    conn.execute("create table public.observed (n integer not null, batch integer not null)")
    errors: list[BaseException] = []
    done = threading.Event()

    def leaser(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn) as c:
                while not done.is_set():
                    rows = lease(c, "q", f"w{seed}", batch_size=rng.choice([1, 2, 3, 5, 10, 50]))
                    (n,) = c.execute(
                        "update public.running_count set n = n + %s returning n", [len(rows)]
                    ).fetchone()
                    c.execute("insert into public.observed values (%s, %s)", [n, len(rows)])
                    c.commit()
                    for row in rows:
                        assert ack(c, row["id"], row["lease_token"]) is True
                        c.execute("update public.running_count set n = n - 1")
                        c.commit()
                    if conn_done(c):
                        done.set()
        except BaseException as exc:
            errors.append(exc)
            done.set()

    def conn_done(c) -> bool:
        (left,) = c.execute("select count(*) from openqueue.live_jobs where queue_name = 'q'").fetchone()
        c.commit()
        return left == 0

    threads = [threading.Thread(target=leaser, args=(i,)) for i in range(LEASERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    (most, leased) = conn.execute("select max(n), sum(batch) from public.observed").fetchone()
    assert most <= MAX_RUNNING
    assert leased == JOBS  # and the work went on to the end
    assert stats(conn)["q"]["completed"] == JOBS


# --- rate_limit -----------------------------------------------------------------------------

RATE = 10
PERIOD = timedelta(milliseconds=100)
RATE_JOBS = 120


def test_rate_limit_bound_holds_over_every_window(dsn, conn):
    """Lease times as the server admitted them; the contract's bound for every window [t, t + T]."""
    set_limits(conn, "q", rate_limit=RATE, rate_period=PERIOD)
    enqueue_batch(conn, "q", list(range(RATE_JOBS)))
    events: list[tuple] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def leaser(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn) as c:
                while True:
                    (before,) = c.execute("select clock_timestamp()").fetchone()
                    rows = lease(c, "q", f"w{seed}", batch_size=rng.choice([1, 2, 4, 7, 20]))
                    (at, after) = c.execute(
                        "select checked_at, clock_timestamp() from openqueue.queue_flow"
                        " where queue_name = 'q'"
                    ).fetchone()
                    c.commit()
                    with lock:
                        events.append((at, len(rows), before, after))
                    for row in rows:
                        ack(c, row["id"], row["lease_token"])
                    c.commit()
                    (left,) = c.execute(
                        "select count(*) from openqueue.live_jobs where queue_name = 'q'"
                    ).fetchone()
                    c.commit()
                    if left == 0:
                        return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=leaser, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert sum(n for _, n, _, _ in events) == RATE_JOBS  # progress: everything leased once
    # Each lease's admission time lies within the call.
    assert all(before <= at <= after for at, _, before, after in events)
    leases = sorted((at, n) for at, n, _, _ in events if n)
    period = PERIOD.total_seconds()
    for i, (start, _) in enumerate(leases):
        total = 0
        for end, n in leases[i:]:
            total += n
            span = (end - start).total_seconds()
            assert total <= RATE * (span / period + 1) + 1e-9, (start, end, total)


def test_rate_limit_one_session(conn):
    set_limits(conn, "q", rate_limit=3, rate_period=timedelta(hours=1))
    enqueue_batch(conn, "q", list(range(10)))
    assert len(lease(conn, "q", batch_size=2)) == 2
    assert len(lease(conn, "q", batch_size=5)) == 1
    assert lease(conn, "q", batch_size=5) == []
    # A bucket never refills by setting the same limits again.
    set_limits(conn, "q", rate_limit=3, rate_period=timedelta(hours=1))
    assert lease(conn, "q") == []
    # A lease that found nothing due takes no token.
    set_limits(conn, "empty", rate_limit=1, rate_period=timedelta(hours=1))
    assert lease(conn, "empty") == []
    enqueue(conn, "empty")
    assert len(lease(conn, "empty")) == 1


def test_both_limits_together(conn):
    set_limits(conn, "q", max_running=2, rate_limit=3, rate_period=timedelta(hours=1))
    enqueue_batch(conn, "q", list(range(10)))
    first = lease(conn, "q", batch_size=10)
    assert len(first) == 2  # max_running
    for row in first:
        ack(conn, row["id"], row["lease_token"])
    assert len(lease(conn, "q", batch_size=10)) == 1  # the third token
    assert lease(conn, "q", batch_size=10) == []


# --- an unlimited queue leases as before -----------------------------------------------------

LOADED = 2000


def _version_3_lease(conn) -> None:
    """oq_lease as versions 2 and 3 shipped it (migration 0002), installed beside today's."""
    text = next(m for m in load_migrations() if m.version == 2).sql
    start = text.index("create or replace function openqueue.oq_lease(")
    end = text.index("$$;", text.index("as $$", start)) + 3
    conn.execute(text[start:end].replace("oq_lease", "oq_lease_v3"))


# What a call reads, per relation of the schema, from the statistics views:
# scans and entries of every table and index, and the blocks of the relations
# a lease only reads (the blocks where new row versions land vary from run to
# run, the same way for both functions, so they are left out; so are those of
# the empty live_jobs_scheduled, whose one descent reads a varying 2 to 4
# pages after vacuums, for both functions alike).
_READS_SQL = """
select 'table ' || s.relname, s.seq_scan, s.seq_tup_read, coalesce(s.idx_scan, 0),
       coalesce(s.idx_tup_fetch, 0), 0
from pg_stat_user_tables as s where s.schemaname = 'openqueue'
union all
select 'index ' || s.indexrelname, s.idx_scan, s.idx_tup_read, s.idx_tup_fetch, 0,
       case when s.indexrelname in ('live_jobs_lease_order', 'queues_pkey', 'queue_flow_pkey')
            then io.idx_blks_hit + io.idx_blks_read else 0 end
from pg_stat_user_indexes as s
join pg_statio_user_indexes as io using (indexrelid)
where s.schemaname = 'openqueue'
union all
select 'heap ' || io.relname, io.heap_blks_hit + io.heap_blks_read, 0, 0, 0, 0
from pg_statio_user_tables as io
where io.schemaname = 'openqueue' and io.relname in ('queues', 'queue_flow', 'queue_limits')
"""


def _reads(conn, function: str, lease_seconds: str) -> dict:
    """Scans, entries and blocks one warm, rolled-back lease call reads, by relation."""
    call = f"select * from openqueue.{function}('emails', 'w', {lease_seconds}, 10)"
    for _ in range(2):  # warm: plans and catalog caches
        with conn.transaction(force_rollback=True):
            conn.execute(call).fetchall()

    def snapshot() -> dict:
        return {row[0]: row[1:] for row in conn.execute(_READS_SQL)}

    conn.execute("vacuum openqueue.live_jobs")  # what rolled-back calls left in the indexes
    with conn.transaction():
        conn.execute("select pg_stat_force_next_flush()")
    before = snapshot()
    with conn.transaction(force_rollback=True):
        assert len(conn.execute(call).fetchall()) == 10
        conn.execute("select pg_stat_force_next_flush()")
    after = snapshot()
    return {
        name: delta
        for name in after
        if any(delta := tuple(a - b for a, b in zip(after[name], before.get(name, after[name]), strict=True)))
    }


def test_an_unlimited_queue_reads_the_same_buffers_as_version_3(conn):
    """The same data, the same call: version 3's oq_lease and this one touch the same buffers."""
    _version_3_lease(conn)
    # No autovacuum or autoanalyze reading these relations between two snapshots.
    for table in ("live_jobs", "queues", "queue_flow", "queue_limits"):
        conn.execute(f"alter table openqueue.{table} set (autovacuum_enabled = false)")
    conn.execute("select openqueue.oq_configure_queue('emails', lease_seconds => 45)")
    conn.execute(
        "select count(*) from openqueue.oq_enqueue_batch('emails', "
        "(select jsonb_agg(g) from generate_series(1, %s) as g))",
        [LOADED],
    )
    conn.execute("analyze openqueue.live_jobs")
    for lease_seconds in ("30", "null"):
        old = _reads(conn, "oq_lease_v3", lease_seconds)
        assert old["index live_jobs_lease_order"][:2] == (1, 10)  # the measure sees the claim
        assert _reads(conn, "oq_lease", lease_seconds) == old, lease_seconds
    # Once other queues are paused and limited, a lease with lease_seconds
    # NULL (the worker's) still reads exactly what it read before, and one
    # with lease_seconds given makes the one lookup of the queue's row that
    # NULL always made.
    pause(conn, "elsewhere")
    set_limits(conn, "limited", max_running=1)
    default = _reads(conn, "oq_lease_v3", "null")
    assert _reads(conn, "oq_lease", "null") == default
    assert _reads(conn, "oq_lease", "30") == default
    # The leases themselves are the same.
    with conn.transaction(force_rollback=True):
        old_ids = [
            r[0] for r in conn.execute("select id from openqueue.oq_lease_v3('emails', 'w', null, 10)")
        ]
    new_ids = [r["id"] for r in lease(conn, "emails", batch_size=10)]
    assert new_ids == old_ids == list(range(1, 11))


def test_queue_settings_lists_every_configured_queue_with_defaults_filled_in(conn):
    conn.execute("select openqueue.oq_enqueue('plain', '{}')")  # jobs, no settings: not listed
    conn.execute("select openqueue.oq_configure_queue('conf', max_attempts => 9)")
    conn.execute("select openqueue.oq_set_queue_max_payload('small', 10)")
    conn.execute("select openqueue.oq_set_queue_notify('quiet', 'when_waiting')")
    pause(conn, "held")
    set_limits(conn, "limited", max_running=3, rate_limit=100, rate_period=timedelta(minutes=1))
    rows = conn.execute("select * from openqueue.oq_queue_settings()").fetchall()
    second, hour = timedelta(seconds=1), timedelta(hours=1)
    assert rows == [
        ("conf", 9, 30, second, hour, "always", 1048576, False, None, None, second),
        ("held", 5, 30, second, hour, "always", 1048576, True, None, None, second),
        ("limited", 5, 30, second, hour, "always", 1048576, False, 3, 100, timedelta(minutes=1)),
        ("quiet", 5, 30, second, hour, "when_waiting", 1048576, False, None, None, second),
        ("small", 5, 30, second, hour, "always", 10, False, None, None, second),
    ]
    # Clearing the limits and resuming shows the defaults again.
    set_limits(conn, "limited")
    resume(conn, "held")
    after = {r[0]: r for r in conn.execute("select * from openqueue.oq_queue_settings()").fetchall()}
    assert after["limited"][8:10] == (None, None)
    assert after["held"][7] is False


def limited(conn, *queues: str) -> list[str]:
    return conn.execute("select openqueue.oq_limited_queues(%s::text[])", [list(queues)]).fetchone()[0]


def test_limited_queues_names_those_with_a_limit_among_those_asked(conn):
    set_limits(conn, "capped", max_running=2)
    set_limits(conn, "paced", rate_limit=10)
    set_limits(conn, "other", max_running=1)  # limited, but not asked about
    pause(conn, "held")  # paused is not limited: oq_resume_queue notifies
    conn.execute("select openqueue.oq_configure_queue('conf', max_attempts => 9)")
    assert limited(conn, "plain", "paced", "held", "capped", "conf") == ["capped", "paced"]
    assert limited(conn, "plain") == []
    assert limited(conn) == []
    set_limits(conn, "capped")  # both limits cleared
    assert limited(conn, "capped", "paced") == ["paced"]


def test_limited_queues_refuses_a_null_array(conn):
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="queue_names"):
        conn.execute("select openqueue.oq_limited_queues(null)")
