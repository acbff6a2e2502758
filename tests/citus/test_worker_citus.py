"""The worker runtime on a Citus cluster (contract section 10, issue 10).

The Worker finds the nodes from oq_nodes(), LISTENs on the coordinator and on
every worker node, passes the queue name on every call for a leased job, and
drains queues held by both worker nodes.
"""

from __future__ import annotations

import threading
import time

import psycopg
from worker.conftest import running, wait_until

from openqueue_py import Worker

from .test_distribution import node_port_of


def queues_on_each_node(conn: psycopg.Connection, prefix: str, per_node: int) -> dict[int, list[str]]:
    """Queue names, ``per_node`` of them held by each worker node."""
    found: dict[int, list[str]] = {}
    index = 0
    while len(found) < 2 or any(len(names) < per_node for names in found.values()):
        name = f"{prefix}_{index}"
        names = found.setdefault(node_port_of(conn, name), [])
        if len(names) < per_node:
            names.append(name)
        index += 1
    return found


def test_worker_drains_queues_on_both_nodes_with_heartbeats_acks_and_nacks(citus_dsn, events):
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        by_node = queues_on_each_node(conn, "drain", 3)
        queues = [name for names in by_node.values() for name in names]
        ids = {
            row[0]
            for queue in queues
            for row in conn.execute(
                "select * from openqueue.oq_enqueue_batch(%s,"
                " (select jsonb_agg(g) from generate_series(1, 40) as g))",
                (queue,),
            )
        }
        slow = {
            queue: conn.execute("select openqueue.oq_enqueue(%s, '\"slow\"')", (queue,)).fetchone()[0]
            for queue in queues[:2]
        }
        failing = conn.execute(
            "select openqueue.oq_enqueue(%s, '\"fail\"', max_attempts => 1)", (queues[-1],)
        ).fetchone()[0]

    seen: list[int] = []
    lock = threading.Lock()

    def handle(job):
        if job.payload == "slow":
            time.sleep(2.5)  # longer than the 1-second lease: only heartbeats keep it
        if job.payload == "fail":
            raise RuntimeError("failing on purpose")
        with lock:
            seen.append(job.id)
        return {"node_queue": job.queue_name}

    worker = Worker(
        citus_dsn, dict.fromkeys(queues, handle), concurrency=8, lease_seconds=1, poll_interval=60.0
    )
    with running(worker):
        wait_until(lambda: len(seen) == len(ids) + len(slow), timeout=120)
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            wait_until(
                lambda: (
                    conn.execute(
                        "select count(*) from openqueue.jobs where queue_name = any(%s)"
                        " and status <> 'completed' and id <> %s",
                        (queues, failing),
                    ).fetchone()[0]
                    == 0
                ),
                timeout=60,
            )
    assert sorted(seen) == sorted(ids | set(slow.values()))  # each job handled once
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select id, status, attempts, result from openqueue.jobs where id = any(%s)",
            (list(slow.values()),),
        ).fetchall()
        # Heartbeats (routed, with the queue name) kept the 1-second leases of the 2.5-second jobs.
        assert sorted((status, attempts) for _, status, attempts, _ in rows) == [("completed", 1)] * 2
        status, error = conn.execute(
            "select status, errors->0->>'error' from openqueue.jobs where id = %s", (failing,)
        ).fetchone()
        # The routed nack (with the queue name) recorded the handler's error.
        assert status == "dead" and error.startswith("RuntimeError: failing on purpose")
    assert len(by_node) == 2  # the queues were held by both worker nodes
    assert not events.named("job.settle_failed")


def test_worker_listens_on_every_node_and_wakes_for_a_job_on_either(citus_dsn, events):
    """With polling an hour away, only a notification can wake the idle worker.

    A routed enqueue notifies on the worker node holding the queue, so each
    job handled here was woken by the LISTEN on that node.
    """
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        by_node = queues_on_each_node(conn, "wake", 1)
        nodes = conn.execute("select * from openqueue.oq_nodes()").fetchall()
    queues = [names[0] for names in by_node.values()]
    handled: list[str] = []

    def handle(job):
        handled.append(job.queue_name)

    worker = Worker(citus_dsn, dict.fromkeys(queues, handle), poll_interval=3600.0, reap_interval=3600.0)
    with running(worker):
        # One LISTEN connection per node: the coordinator and the two workers.
        wait_until(lambda: len(events.named("worker.listening")) == len(nodes) == 3, timeout=60)
        time.sleep(0.5)  # the start-up lease round is over: the worker sleeps on its listeners
        with psycopg.connect(citus_dsn, autocommit=True) as conn:
            for queue in queues:
                conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,))
                wait_until(lambda queue=queue: queue in handled, timeout=30)
    assert sorted(handled) == sorted(queues)
    ports = {record.__dict__.get("port") for record in events.named("worker.listening")}
    assert ports == {str(port) for _, port, _ in nodes}
