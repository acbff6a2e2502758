"""Figures 6 and 9: OpenQueue with 10,000,000-row tables (one run shares the big setups).

    python -m bench.large [--rows 10000000] [--small 10000] [--future 1000000] [--purge 1000000]

In this order, on one server:

1. 6a, small: ``--small`` due jobs; ``oq_lease`` latency (batch 1 and 16),
   each call its own transaction (commit included), warmed up first.
2. 6c, empty: drain 20,000 jobs with the Worker (2 x 8, default settings),
   right after a yardstick drain.
3. Load ``--rows`` finished (completed) jobs, ``--purge`` of them finished a
   day ago. The fast way is one ``INSERT ... SELECT generate_series`` per
   million rows into the finished-jobs table (the table OpenQueue stores
   terminal jobs in; its NOT NULL columns are filled by name); when the
   layout has a table or column this loader does not know, it falls back to
   the API (oq_enqueue_batch, then oq_lease + oq_ack_many/oq_ack in SQL, then
   ``UPDATE openqueue.jobs SET finished_at`` to age the old ones), which is
   much slower. VACUUM ANALYZE afterwards, as autovacuum would have by then.
4. 6c, kept: the same drain with the finished jobs kept; figure = (kept /
   its yardstick) / (empty / its yardstick), target >= 0.9.
5. 9: ``oq_stats()`` latency (median of 5, target < 10 ms) and
   ``oq_health()`` when installed; then the purge of the ``--purge`` old
   rows: ``oq_purge_batch(older_than, include_dead, max_rows)`` when
   installed (called until it deletes nothing; a procedure is CALLed once),
   else ``oq_purge``. Reported: time, transactions (sampled from
   pg_stat_activity.xact_start of the purging backend every 5 ms), longest
   transaction (every lock the purge takes is held at most that long).
6. 6a, big: ``--rows`` due jobs (oq_enqueue_batch, 250,000 per call,
   payloads built server-side); the same lease latencies; target: p50 within
   1.5x of step 1's.
7. 6b: ``--future`` jobs scheduled a day ahead at a HIGHER priority (10)
   than the due ones (0), same queue; what one warmed-up ``oq_lease`` call
   reads of the indexes: the delta of idx_blks_hit + idx_blks_read over
   every openqueue index (pg_statio_user_indexes) and of idx_tup_read,
   stats flushed with pg_stat_force_next_flush(), the least of 3 calls. The target, O(batch), is
   on index buffers: at most 50 + 10 x batch (a scan that steps over the
   future entries reads about one buffer per few hundred of them: ~11,000
   for 1,000,000). idx_tup_read is printed too but counts only the entries
   the scan returns, not those it steps over, so it cannot show this. The
   table buffers (heap_blks_hit + heap_blks_read, pg_statio_user_tables)
   are held to the same bound: a statement of the call that scans the table
   reads no index at all (197,000 table buffers and 1 s a call, once).

The embedded server gets ``max_wal_size = 16GB`` and ``checkpoint_timeout =
30min`` so that the bulk loads are not a string of checkpoints (durability
settings unchanged); an external server is left as it is. Takes about 7
minutes and several GB of disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass

import psycopg

from .common import database, function_kind, has_function, percentile
from .drain import analyze, drain_lean, drain_worker, queue_name
from .results import NA, Row, fmt_ms, fmt_rate, ratio, report

CHUNK = 250_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- loading -------------------------------------------------------------------------------------


def enqueue_many(
    conn: psycopg.Connection, queue: str, rows: int, priority: int = 0, delay: str = "0"
) -> None:
    for start in range(0, rows, CHUNK):
        conn.execute(
            "select count(*) from openqueue.oq_enqueue_batch(%s, "
            "(select jsonb_agg('{}'::jsonb) from generate_series(1, %s)), %s, now() + %s::interval)",
            (queue, min(CHUNK, rows - start), priority, delay),
        )


# How the direct loader fills a finished job's columns; `g` is the row number, `old` the rows to age.
FINISHED_AT = "case when g <= %(old)s then now() - interval '1 day' else now() end"
KNOWN = {
    "queue_name": "%(queue)s",
    "status": "'completed'",
    "priority": "0",
    "run_at": f"({FINISHED_AT}) - interval '1 second'",
    "created_at": f"({FINISHED_AT}) - interval '2 seconds'",
    "attempts": "1",
    "max_attempts": "5",
    "leased_by": "'bench-loader'",
    "payload": "'{}'::jsonb",
    "errors": "'[]'::jsonb",
    "finished_at": FINISHED_AT,
}


def direct_insert(conn: psycopg.Connection, queue: str, rows: int, old: int) -> str | None:
    """INSERT ... SELECT into openqueue.finished_jobs; None when this layout is not one it knows."""
    table = conn.execute("select to_regclass('openqueue.finished_jobs')").fetchone()
    sequence = conn.execute(
        "select format('%I.%I', schemaname, sequencename) from pg_sequences where schemaname = 'openqueue' "
        "order by sequencename <> 'job_id_seq' limit 1"
    ).fetchone()
    if not table or table[0] is None or not sequence:
        return None
    columns = conn.execute(
        "select attname, attnotnull and not atthasdef from pg_attribute "
        "where attrelid = 'openqueue.finished_jobs'::regclass and attnum > 0 and not attisdropped"
    ).fetchall()
    values = {**KNOWN, "id": f"nextval('{sequence[0]}')"}
    if any(required and name not in values for name, required in columns):
        return None
    chosen = [name for name, _ in columns if name in values]
    sql = (
        f"insert into openqueue.finished_jobs ({', '.join(chosen)}) "
        f"select {', '.join(values[name] for name in chosen)} from generate_series(%(first)s, %(last)s) as g"
    )
    try:
        for start in range(0, rows, 1_000_000):
            conn.execute(
                sql, {"queue": queue, "old": old, "first": start + 1, "last": min(rows, start + 1_000_000)}
            )
    except psycopg.Error as exc:  # e.g. a partitioned layout without a partition for a day ago
        log(f"direct insert refused ({exc.diag.message_primary}); falling back to the API")
        conn.execute("delete from openqueue.finished_jobs where queue_name = %s", (queue,))
        return None
    return "direct INSERT ... SELECT into openqueue.finished_jobs"


def api_load(conn: psycopg.Connection, queue: str, rows: int, old: int) -> str:
    """Through the functions: enqueue, lease + ack in SQL, age the oldest through the view."""
    enqueue_many(conn, queue, rows)
    if has_function(conn, "oq_ack_many"):
        ack = (
            "select count(*) from (select array_agg(l.id) as ids, array_agg(l.lease_token) as tokens "
            "from openqueue.oq_lease(%s, 'bench-loader', 3600, 10000) as l) as s, "
            "openqueue.oq_ack_many(s.ids, s.tokens)"
        )
    else:
        ack = (
            "select count(*) from openqueue.oq_lease(%s, 'bench-loader', 3600, 10000) as l "
            "where openqueue.oq_ack(l.id, l.lease_token)"
        )
    while True:
        row = conn.execute(ack, (queue,)).fetchone()
        if not row or not row[0]:
            break
    conn.execute(
        "update openqueue.jobs set finished_at = now() - interval '1 day' where id in "
        "(select id from openqueue.jobs where queue_name = %s order by id limit %s)",
        (queue, old),
    )
    return "API: oq_enqueue_batch, oq_lease + ack in SQL, UPDATE openqueue.jobs SET finished_at"


def load_finished(conn: psycopg.Connection, queue: str, rows: int, old: int) -> str:
    return direct_insert(conn, queue, rows, old) or api_load(conn, queue, rows, old)


# -- measurements --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    p50: float
    p99: float


def lease_latency(dsn: str, queue: str, batch: int, calls: int) -> Latency:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        sql = "select count(*) from openqueue.oq_lease(%s, 'bench-probe', null, %s)"
        for _ in range(5):
            cur.execute(sql, (queue, batch)).fetchone()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            got = cur.execute(sql, (queue, batch)).fetchone()
            times.append(time.perf_counter() - started)
            if not got or got[0] != batch:
                raise RuntimeError(f"oq_lease returned {got} rows, wanted {batch}")
    return Latency(percentile(times, 50), percentile(times, 99))


def index_counters(conn: psycopg.Connection) -> tuple[int, int, int]:
    """Index entries returned, index buffers and table buffers read so far in schema openqueue."""
    conn.execute("select pg_stat_clear_snapshot()")
    row = conn.execute(
        "select coalesce(sum(s.idx_tup_read), 0), coalesce(sum(io.idx_blks_hit + io.idx_blks_read), 0), "
        "(select coalesce(sum(t.heap_blks_hit + t.heap_blks_read), 0) from pg_statio_user_tables as t "
        "where t.schemaname = 'openqueue') "
        "from pg_stat_user_indexes as s join pg_statio_user_indexes as io using (indexrelid) "
        "where s.schemaname = 'openqueue'"
    ).fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def index_reads(dsn: str, queue: str, batch: int, tries: int = 3) -> tuple[int, int, int, float]:
    """Index entries returned, index buffers, table buffers and latency of one warmed-up oq_lease call.

    Table buffers too: a statement of the call that scanned the table
    instead of an index would read no index buffer at all (a probe written
    as an EXISTS did, at 1 s a call, before schema version 7 was released).

    The counters are server-wide, so a concurrent autovacuum of the same
    tables would add its own reads: the least of ``tries`` measurements.
    """
    best: tuple[int, int, int, float] | None = None
    with psycopg.connect(dsn, autocommit=True) as probe, psycopg.connect(dsn, autocommit=True) as watch:
        sql = "select count(*) from openqueue.oq_lease(%s, 'bench-probe', null, %s)"
        for _ in range(3):
            probe.execute(sql, (queue, batch))
        for _ in range(tries):
            probe.execute("select pg_stat_force_next_flush()")
            time.sleep(0.3)
            entries, buffers, heap = index_counters(watch)
            started = time.perf_counter()
            probe.execute(sql, (queue, batch))
            elapsed = time.perf_counter() - started
            probe.execute("select pg_stat_force_next_flush()")
            time.sleep(0.3)
            after_entries, after_buffers, after_heap = index_counters(watch)
            measured = (after_entries - entries, after_buffers - buffers, after_heap - heap, elapsed)
            if best is None or measured[1] + measured[2] < best[1] + best[2]:
                best = measured
    assert best is not None
    return best


def timed(conn: psycopg.Connection, sql: str, calls: int = 5) -> float:
    times = []
    for _ in range(calls + 1):
        started = time.perf_counter()
        conn.execute(sql).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


@dataclass(frozen=True)
class Purge:
    how: str
    rows: int
    seconds: float
    transactions: int
    longest: float


def purge(dsn: str, older_than: str) -> Purge:
    """Purge, watching the purging backend's transactions from another connection."""
    conn = psycopg.connect(dsn, autocommit=True)
    kind = function_kind(conn, "oq_purge_batch")
    pid = conn.info.backend_pid
    deleted = 0
    calls = 0
    longest_call = 0.0
    failure: list[BaseException] = []

    def work() -> None:
        nonlocal deleted, calls, longest_call
        try:
            if kind == "p":
                conn.execute("call openqueue.oq_purge_batch(%s::interval, false, 10000)", (older_than,))
                calls = 0
            elif kind == "f":
                while True:
                    started = time.perf_counter()
                    row = conn.execute(
                        "select * from openqueue.oq_purge_batch(%s::interval, false, 10000)", (older_than,)
                    ).fetchone()
                    longest_call = max(longest_call, time.perf_counter() - started)
                    calls += 1
                    got = int(row[0]) if row and row[0] is not None else 0
                    deleted += got
                    if got == 0:
                        break
            else:
                started = time.perf_counter()
                row = conn.execute("select openqueue.oq_purge(%s::interval)", (older_than,)).fetchone()
                longest_call = time.perf_counter() - started
                calls = 1
                deleted = int(row[0]) if row else 0
        except BaseException as exc:  # reported by the caller
            failure.append(exc)

    thread = threading.Thread(target=work)
    starts: set = set()
    longest = 0.0
    with psycopg.connect(dsn, autocommit=True) as watch:
        started = time.perf_counter()
        thread.start()
        while thread.is_alive():
            row = watch.execute(
                "select xact_start, extract(epoch from clock_timestamp() - xact_start) "
                "from pg_stat_activity where pid = %s and xact_start is not null",
                (pid,),
            ).fetchone()
            if row:
                starts.add(row[0])
                longest = max(longest, float(row[1]))
            time.sleep(0.005)
        seconds = time.perf_counter() - started
    thread.join()
    conn.close()
    if failure:
        raise failure[0]
    how = {"p": "CALL oq_purge_batch", "f": "oq_purge_batch loop (max_rows 10,000)"}.get(
        kind or "", "oq_purge"
    )
    return Purge(how, deleted, seconds, calls or len(starts), max(longest, longest_call))


# -- the run -------------------------------------------------------------------------------------


def drain_pair(dsn: str, jobs: int) -> tuple[float, float]:
    """Worker rate (2 x 8, default) and the yardstick's batched rate right before it."""
    yard = drain_lean(dsn, queue_name("ys"), jobs, "yardstick", 2, 8, None)
    worker = drain_worker(dsn, queue_name("drain"), jobs, "sync", 2, 8, None)
    return worker.rate, yard.rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--future", type=int, default=1_000_000)
    parser.add_argument("--purge", type=int, default=1_000_000)
    parser.add_argument("--drain-jobs", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with database() as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        if not os.environ.get("OPENQUEUE_BENCH_DSN"):
            conn.execute("alter system set max_wal_size = '16GB'")
            conn.execute("alter system set checkpoint_timeout = '30min'")
            conn.execute("select pg_reload_conf()")
        rows: list[Row] = []

        log(f"6a: {args.small:,} due jobs, lease latency")
        enqueue_many(conn, "backlog_small", args.small)
        analyze(conn, "openqueue")
        small = {
            b: lease_latency(dsn, "backlog_small", b, args.calls // b if b > 1 else args.calls)
            for b in (1, 16)
        }

        log("6c: drain, empty finished table")
        empty, empty_yard = drain_pair(dsn, args.drain_jobs)
        log(f"  Worker {empty:,.0f} jobs/s, yardstick {empty_yard:,.0f} jobs/s")

        log(f"loading {args.rows:,} finished jobs")
        started = time.monotonic()
        how = load_finished(conn, "finished_bulk", args.rows, args.purge)
        log(f"  {how}: {time.monotonic() - started:.0f} s; vacuum analyze")
        started = time.monotonic()
        analyze(conn, "openqueue")
        log(f"  vacuum analyze: {time.monotonic() - started:.0f} s")

        log("6c: drain, finished jobs kept")
        kept, kept_yard = drain_pair(dsn, args.drain_jobs)
        log(f"  Worker {kept:,.0f} jobs/s, yardstick {kept_yard:,.0f} jobs/s")
        normalized = ratio(ratio(kept, kept_yard), ratio(empty, empty_yard))

        log("9: oq_stats, oq_health, purge")
        stats = timed(conn, "select * from openqueue.oq_stats()")
        health = (
            timed(conn, "select * from openqueue.oq_health()") if has_function(conn, "oq_health") else None
        )
        purged = purge(dsn, "1 hour")
        log(f"  {purged}")

        log(f"6a: loading {args.rows:,} due jobs")
        started = time.monotonic()
        enqueue_many(conn, "backlog_big", args.rows)
        log(f"  oq_enqueue_batch, {CHUNK:,} a call: {time.monotonic() - started:.0f} s; analyze")
        analyze(conn, "openqueue", vacuum=False)
        big = {
            b: lease_latency(dsn, "backlog_big", b, args.calls // b if b > 1 else args.calls) for b in (1, 16)
        }

        log(f"6b: {args.future:,} future jobs at a higher priority")
        started = time.monotonic()
        enqueue_many(conn, "backlog_big", args.future, priority=10, delay="1 day")
        log(f"  {time.monotonic() - started:.0f} s")
        analyze(conn, "openqueue", vacuum=False)
        reads = {b: index_reads(dsn, "backlog_big", b) for b in (1, 16)}
        stats_live = timed(conn, "select * from openqueue.oq_stats()", calls=3)

        for b in (1, 16):
            r = ratio(big[b].p50, small[b].p50)
            rows.append(
                Row(
                    f"6a. oq_lease p50, batch {b}, {args.rows:,} due vs {args.small:,}",
                    f"{fmt_ms(big[b].p50)} (p99 {fmt_ms(big[b].p99)})",
                    f"{fmt_ms(small[b].p50)} (p99 {fmt_ms(small[b].p99)})",
                    f"{r:.2f}x",
                    "<= 1.50x",
                    r <= 1.5,
                )
            )
        for b in (1, 16):
            entries, buffers, heap, elapsed = reads[b]
            rows.append(
                Row(
                    f"6b. index reads of one oq_lease, batch {b}, {args.future:,} future jobs ahead",
                    f"{buffers:,} index buffers ({entries:,} entries returned), {heap:,} table buffers, "
                    f"{fmt_ms(elapsed)}",
                    target=f"<= {50 + 10 * b} buffers each",
                    passed=buffers <= 50 + 10 * b and heap <= 50 + 10 * b,
                )
            )
        rows.append(
            Row(
                f"6c. Worker drain with {args.rows:,} finished jobs kept vs empty (each / its yardstick)",
                f"{fmt_rate(kept)} (yardstick {fmt_rate(kept_yard)})",
                f"{fmt_rate(empty)} (yardstick {fmt_rate(empty_yard)})",
                f"{normalized:.2f}x",
                ">= 0.90x",
                normalized >= 0.9,
            )
        )
        rows.append(
            Row(
                f"9. oq_stats() with {args.rows:,} finished jobs",
                fmt_ms(stats),
                target="< 10 ms",
                passed=stats < 0.01,
            )
        )
        rows.append(
            Row(
                f"9. oq_stats() with {args.rows + args.future:,} waiting jobs too (reference)",
                fmt_ms(stats_live),
            )
        )
        rows.append(Row("9. oq_health()", fmt_ms(health) if health is not None else NA))
        rows.append(
            Row(
                f"9. purge of {purged.rows:,} old finished jobs ({purged.how})",
                f"{purged.seconds:.1f} s, {purged.transactions} transaction(s), "
                f"longest {purged.longest:.2f} s",
                target="> 1 transaction, longest <= 1 s",
                passed=purged.transactions > 1 and purged.longest <= 1.0,
            )
        )
        description = (
            "`python -m bench.large` (see its docstring): oq_lease latency with 10,000,000 due jobs "
            "vs 10,000 (each call its own transaction); index buffers one lease reads with 1,000,000 "
            "future jobs at a higher priority (pg_statio_user_indexes delta); Worker drain "
            "(2 x 8) with 10,000,000 finished jobs kept vs empty, each divided by a yardstick drain run "
            "just before it; oq_stats() latency; purge of 1,000,000 rows (transactions and the longest "
            "one sampled from pg_stat_activity)."
        )
        report("6 and 9. Backlog and operations at 10,000,000 rows", description, rows, dsn)


if __name__ == "__main__":
    main()
