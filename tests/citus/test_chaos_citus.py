"""Worker nodes restarted under a running Worker, and a short chaos run on a cluster (issue 10).

The first two tests use a cluster of their own (a restarted node must not
disturb the session cluster of the other tests): the Worker LISTENs again on
a worker node restarted with ``pg_ctl restart -m immediate`` and is woken by
it, and a Citus ``XX000`` that reports a node connection lost at commit is a
transient error for the worker's calls (retried, not a failed ack).

The last one is the chaos run of ``tests/chaos`` in Citus mode
(``tests/chaos/citus.py``) for ``CHAOS_SECONDS`` (25 here; ``make
chaos-citus`` runs 60): producers, three ``openqueue worker`` processes,
kills, freezes, backend terminations and restarts and stops of worker nodes,
then the accounting of ``tests/chaos/verify.py``. Its summary is printed in
pytest's terminal summary (section "chaos on citus").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from chaos.plan import ChaosConfig
from worker.conftest import running, wait_until

from openqueue_py import Worker
from openqueue_py._sql import Call
from openqueue_py.worker.connections import TRANSIENT, Connections, NodeUnavailable

from .cluster import Cluster, start_cluster
from .conftest import install_distributed
from .test_worker_citus import queues_on_each_node

DATABASE = "oq_restart"
CHAOS_SECONDS = 25  # in `make test-citus`; CHAOS_SECONDS overrides it (`make chaos-citus`: 60)
SUMMARIES: list[str] = []


class _Summary:
    """Prints the chaos summaries at the end of the session (tests/citus/conftest.py has no hook for it)."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if SUMMARIES:
            terminalreporter.section("chaos on citus")
            for text in SUMMARIES:
                terminalreporter.write_line(text)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        install_distributed(cluster, DATABASE)
        yield cluster
    finally:
        cluster.stop()


def _enqueue(dsn: str, queue: str) -> bool:
    """One enqueue; False when the coordinator's connection to the restarted node is not back yet."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,))
        return True
    except psycopg.OperationalError:
        return False


def _port(record: logging.LogRecord) -> str:
    return str(record.__dict__.get("port"))


def test_worker_listens_again_on_a_restarted_worker_node_and_is_woken_by_it(own_cluster, events):
    """With polling an hour away, only the LISTEN re-opened on the restarted node can wake the worker."""
    dsn = own_cluster.dsn(DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        by_node = queues_on_each_node(conn, "restart", 1)
    queues = [names[0] for names in by_node.values()]
    handled: list[str] = []

    def handle(job):
        handled.append(job.queue_name)

    worker = Worker(dsn, dict.fromkeys(queues, handle), poll_interval=3600.0, reap_interval=3600.0)
    with running(worker):
        wait_until(lambda: len(events.named("worker.listening")) == 3, timeout=60)
        for node in own_cluster.worker_nodes:
            port = str(node.port)
            before = len([r for r in events.named("worker.listening") if _port(r) == port])
            own_cluster.restart_node(node, "immediate")
            wait_until(
                lambda port=port, before=before: (
                    len([r for r in events.named("worker.listening") if _port(r) == port]) > before
                ),
                timeout=30,
                what=f"the listener to LISTEN again on node {port}",
            )
            time.sleep(1.0)  # the lease round after re-listening is over: the worker sleeps again
            queue = next(name for p, names in by_node.items() if p == node.port for name in names)
            handled.clear()
            wait_until(lambda queue=queue: _enqueue(dsn, queue), timeout=30, what=f"an enqueue into {queue}")
            wait_until(lambda queue=queue: queue in handled, timeout=10, what=f"a job of {queue} handled")
    lost = events.named("worker.listen_lost")
    assert {_port(r) for r in lost} <= {str(n.port) for n in own_cluster.worker_nodes}
    assert len(lost) >= 2  # each restart dropped a LISTEN connection, and it was re-opened


def test_a_node_connection_lost_at_commit_is_a_transient_error_for_the_worker(own_cluster):
    """Citus reports a write's node connection lost before the commit as XX000, not 08006.

    The worker's calls raise NodeUnavailable (transient: retried with backoff,
    an ack's outcome checked with oq_settled) instead of a database error that
    would fail the ack and leave the job to its lease's expiry.
    """
    dsn = own_cluster.dsn(DATABASE)
    node = own_cluster.worker_nodes[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create schema if not exists lost_commit")
        conn.execute("create table if not exists lost_commit.t (k text, v int)")
        distributed = "select 1 from pg_dist_partition where logicalrelid = 'lost_commit.t'::regclass"
        if conn.execute(distributed).fetchone() is None:
            conn.execute("select create_distributed_table('lost_commit.t', 'k')")
        key = next(
            f"k{i}"
            for i in range(1000)
            if conn.execute(
                "select n.nodeport from pg_dist_placement as p join pg_dist_node as n using (groupid)"
                " where p.shardid = get_shard_id_for_distribution_column('lost_commit.t', %s::text)",
                (f"k{i}",),
            ).fetchone()[0]
            == node.port
        )
        conn.execute(
            "create or replace function lost_commit.write_then_wait(key text) returns integer"
            " language plpgsql as $$ begin insert into lost_commit.t values (key, 1);"
            " perform pg_sleep(1.5); return 1; end $$"
        )

    def terminate() -> None:
        time.sleep(0.7)  # the insert is on the node; the function sleeps before its commit
        with psycopg.connect(node.dsn(DATABASE), autocommit=True) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database()"
                " and application_name like 'citus_internal%%' and backend_type = 'client backend'"
            )

    async def call() -> BaseException | None:
        conns = Connections(dsn, 1)
        try:
            await conns.run(Call("select lost_commit.write_then_wait(%(key)s)", {"key": key}, list))
        except Exception as exc:
            return exc
        finally:
            await conns.close()
        return None

    thread = threading.Thread(target=terminate)
    thread.start()
    error = asyncio.run(call())
    thread.join()
    assert isinstance(error, NodeUnavailable) and isinstance(error, TRANSIENT), repr(error)
    cause = error.__cause__
    assert isinstance(cause, psycopg.Error) and cause.sqlstate == "XX000"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from lost_commit.t").fetchone()[0] == 0  # nothing committed


CONFIG = ChaosConfig.from_env(default_seconds=CHAOS_SECONDS, citus=True)


@pytest.mark.slow
@pytest.mark.timeout(int(CONFIG.seconds + CONFIG.drain_timeout + 300))
def test_chaos_run_on_citus_with_worker_nodes_restarted_loses_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from chaos.driver import run_chaos

    if not request.config.pluginmanager.has_plugin("chaos-citus-summary"):
        request.config.pluginmanager.register(_Summary(), "chaos-citus-summary")
    report = run_chaos(CONFIG, tmp_path)
    SUMMARIES.append(report.text)
    assert not report.violations, report.text
