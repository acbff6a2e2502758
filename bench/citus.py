"""Scale-out on Citus: drain rate and wake-up latency on a 3-node cluster beside one node.

    python -m bench.citus [--jobs 20000] [--queues 8] [--processes 2] [--latency-jobs 100]

One run starts a Citus 14 cluster on loopback (a coordinator and two worker
nodes, tests/citus/cluster.py: Citus built once into .cache/citus) and
measures, on the same binaries (PostgreSQL 16) and in the same minutes:

* one node: a database on the coordinator without the citus extension, the
  plain single-PostgreSQL install;
* the cluster: a database with citus on every node, OpenQueue installed on
  the coordinator and oq_distribute() run; the queues spread over both
  worker nodes, every hot-path call routed to the node holding its queue.

Drain: ``--jobs`` no-op jobs preloaded over ``--queues`` queues, drained by
``--processes`` Worker processes (concurrency 8, every queue), rate = jobs
over the span of their finished_at. Wake-up: one idle Worker (poll interval
60 s, so each pick-up is a NOTIFY wake-up), ``--latency-jobs`` jobs
enqueued one at a time 20 ms apart, alternating between queues on the two
worker nodes; latency = handler start minus the enqueue's COMMIT.

Honest note: all three nodes and the workers share this machine's cores
(2 here). A cluster cannot be faster than one node on the same 2 cores: it
does the same work plus a routing hop on the coordinator. What this shows is
the cost per call of the routed path and that nothing fans out; scale-out
pays off when the nodes are separate machines.
"""

from __future__ import annotations

import argparse
import json
import time

import psycopg

from openqueue_py import install

from .common import machine, spawn, summary_ms


def _cluster():
    from tests.citus.cluster import start_cluster  # the test fixture's cluster (builds Citus once)

    return start_cluster()


def setup(cluster, database: str, distributed: bool) -> str:
    if distributed:
        cluster.setup_database(database)
    else:
        with psycopg.connect(cluster.coordinator.dsn(), autocommit=True) as conn:
            conn.execute(f'create database "{database}"')
    dsn = cluster.dsn(database)
    install(dsn)
    if distributed:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select openqueue.oq_distribute()")
    return dsn


def queues_over_nodes(dsn: str, prefix: str, count: int) -> tuple[list[str], dict[str, int]]:
    """``count`` queue names and the port of the node holding each (0 on one node)."""
    names = [f"{prefix}_{i}" for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("select exists (select from pg_extension where extname = 'citus')").fetchone()[0]:
            return names, dict.fromkeys(names, 0)
        ports = {
            name: conn.execute(
                "select n.nodeport from pg_dist_placement as p join pg_dist_node as n using (groupid)"
                " where p.shardid = get_shard_id_for_distribution_column('openqueue.live_jobs', %s::text)",
                (name,),
            ).fetchone()[0]
            for name in names
        }
    return names, ports


def wait_completed(dsn: str, queues: list[str], total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            done = conn.execute(
                "select coalesce(sum(completed), 0) from openqueue.oq_stats() where queue_name = any(%s)",
                (queues,),
            ).fetchone()[0]
            if done >= total:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {total} jobs completed after {timeout} s")
            time.sleep(0.2)


def drain(dsn: str, jobs: int, queue_count: int, processes: int) -> dict:
    queues, ports = queues_over_nodes(dsn, "drain", queue_count)
    per_queue = jobs // queue_count
    with psycopg.connect(dsn, autocommit=True) as conn:
        for queue in queues:
            for start in range(0, per_queue, 5000):
                n = min(5000, per_queue - start)
                conn.execute(
                    "select count(*) from openqueue.oq_enqueue_batch(%s,"
                    " (select jsonb_agg(g) from generate_series(1, %s) as g))",
                    (queue, n),
                ).fetchone()
    total = per_queue * queue_count
    workers = [
        spawn("bench.worker_proc", "--dsn", dsn, "--queue", ",".join(queues), "--concurrency", "8")
        for _ in range(processes)
    ]
    try:
        wait_completed(dsn, queues, total, timeout=900)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        span = conn.execute(
            "select extract(epoch from max(finished_at) - min(finished_at))::float8"
            " from openqueue.jobs where queue_name = any(%s)",
            (queues,),
        ).fetchone()[0]
    return {
        "jobs": total,
        "queues": queue_count,
        "nodes_holding_queues": len(set(ports.values())),
        "jobs_per_s": round((total - 1) / span) if span else None,
    }


def latency(dsn: str, jobs: int, gap_s: float = 0.02) -> dict:
    candidates, ports = queues_over_nodes(dsn, "wake", 16)
    by_node: dict[int, str] = {}
    for name in candidates:
        by_node.setdefault(ports[name], name)
    queues = list(by_node.values())[:2]
    worker = spawn("bench.worker_proc", "--dsn", dsn, "--queue", ",".join(queues), "--poll-interval", "60")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for queue in queues:  # warm-up: the worker is up and listening on every node
                conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,))
            wait_completed(dsn, queues, len(queues), timeout=60)
            time.sleep(0.5)
            committed: dict[int, float] = {}
            for i in range(jobs):
                row = conn.execute(
                    "select openqueue.oq_enqueue(%s, '{}')", (queues[i % len(queues)],)
                ).fetchone()
                committed[row[0]] = time.monotonic()
                time.sleep(gap_s)
            wait_completed(dsn, queues, jobs + len(queues), timeout=120)
            rows = conn.execute(
                "select id, result from openqueue.jobs where id = any(%s)", (list(committed),)
            ).fetchall()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    values = [float(result) - committed[job_id] for job_id, result in rows]
    return {"jobs": len(values), "queues_on_nodes": len(queues), **summary_ms(values)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--queues", type=int, default=8)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--latency-jobs", type=int, default=100)
    args = parser.parse_args()
    cluster = _cluster()
    results: dict[str, dict] = {}
    try:
        # The cluster first: its install creates OpenQueue's roles through Citus,
        # on every node; an install in a database without citus would create
        # them on the coordinator only, and the cluster's GRANTs would then fail.
        for label, distributed in (("citus 3 nodes", True), ("one node", False), ("citus again", True)):
            dsn = setup(cluster, f"bench_{label.replace(' ', '_')}", distributed)
            results[label] = {
                "drain": drain(dsn, args.jobs, args.queues, args.processes),
                "wakeup_ms": latency(dsn, args.latency_jobs),
            }
            print(label, json.dumps(results[label]), flush=True)
    finally:
        cluster.stop()
    print(f"\nmachine: {machine()}; every node on this machine's cores")
    print(f"{'setup':16} {'drain jobs/s':>13} {'wake p50 ms':>12} {'wake p95 ms':>12} {'wake max ms':>12}")
    for label, result in results.items():
        wake = result["wakeup_ms"]
        print(
            f"{label:16} {result['drain']['jobs_per_s']:>13,} {wake['p50_ms']:>12} {wake['p95_ms']:>12}"
            f" {wake['max_ms']:>12}"
        )


if __name__ == "__main__":
    main()
