"""Citus mode of the chaos run: the same producers, workers, ledger and accounting on a cluster.

``CitusChaosRun`` starts a coordinator and two worker nodes
(``tests/citus/cluster.py``, every node with ``synchronous_commit = on``),
installs OpenQueue on the coordinator and distributes it, and picks
``queues_per_node`` queues held by each worker node (checked against
``oq_nodes()`` and ``pg_dist_placement``). Producers and ``openqueue worker``
processes connect to the coordinator only; the workers LISTEN on every node.

Its server faults are worker-node faults: ``pg_ctl restart -m immediate`` of
one worker node, and an immediate stop of one for a few seconds, each node in
turn; backends are terminated on all three nodes. The coordinator is not
restarted.

The ledger lives in a separate plain PostgreSQL (an embedded server the run
never touches): it is the witness against which the cluster is checked, so it
shares none of the cluster's failure modes. On a worker node it would be
lost or refused with the node, and a local table on the coordinator would
tie the witness to the coordinator's health and to Citus's handling of local
tables next to distributed ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

import openqueue_py
from openqueue_py.embedded import EmbeddedPostgres

try:
    from tests.citus.cluster import Cluster, Node
except ImportError:  # under pytest without the checkout on sys.path: tests/citus is package "citus"
    from citus.cluster import Cluster, Node  # type: ignore[no-redef]

from .driver import LEDGER_DDL, SERVER_SETTINGS, ChaosRun
from .plan import ChaosConfig
from .verify import Fault

DATABASE = "chaos"
# An acknowledged commit must survive an immediate restart of the node that made it.
# A node that crashes in the middle of a two-phase commit keeps the prepared
# transaction, and its row locks, until a coordinator's maintenance daemon
# recovers it, every citus.recover_2pc_interval (1 minute by default): oq_reap
# (one transaction over both nodes) and oq_wait wait on those locks, and the
# jobs the waiting reap already reclaimed stay locked with it. With the
# default, a run saw every worker idle for 41 s after a worker node's restart
# (docs/scaling.md, "Chaos on the cluster"); 5 s bounds that wait.
# CHAOS_CITUS_RECOVER_2PC_INTERVAL=1min replays the default.
CLUSTER_SETTINGS = {
    "synchronous_commit": "on",
    "max_connections": "300",
    "citus.recover_2pc_interval": os.environ.get("CHAOS_CITUS_RECOVER_2PC_INTERVAL") or "5s",
}
# After a worker node is back, each worker process LISTENs on it again within this.
RELISTEN_BOUND_S = 20.0


def queues_per_node(conn: psycopg.Connection, per_node: int) -> dict[int, list[str]]:
    """``per_node`` queue names (``chaos_<n>``) held by each worker node, by node port."""
    workers = {int(r[1]) for r in conn.execute("select * from openqueue.oq_nodes()") if not r[2]}
    found: dict[int, list[str]] = {port: [] for port in workers}
    for index in range(10_000):
        if all(len(names) >= per_node for names in found.values()):
            break
        name = f"chaos_{index}"
        row = conn.execute(
            "select n.nodeport from pg_dist_placement as p join pg_dist_node as n using (groupid)"
            " where p.shardid = get_shard_id_for_distribution_column('openqueue.live_jobs', %s::text)",
            (name,),
        ).fetchone()
        assert row is not None, name
        names = found.setdefault(int(row[0]), [])
        if len(names) < per_node:
            names.append(name)
    return found


class CitusChaosRun(ChaosRun):
    def __init__(self, config: ChaosConfig, work_dir: Path, log: Callable[[str], None]) -> None:
        super().__init__(config, work_dir, log)
        # Its own temporary folder (the server user must reach it; a pytest tmp_path is
        # private to root): removed at the end, the nodes' server logs copied to work_dir.
        root = Path(tempfile.mkdtemp(prefix="openqueue-chaos-citus-"))
        self.cluster = Cluster(root, 2, settings=CLUSTER_SETTINGS)
        self.pg = EmbeddedPostgres(settings=SERVER_SETTINGS)  # the ledger's server
        self.node_queues: dict[str, list[str]] = {}  # worker node name -> its queues
        self.node_dsns: list[str] = []
        self.ledger_version = ""

    def start_server(self) -> None:
        # The ledger: a plain PostgreSQL of its own.
        self.pg.start()
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute(f"create database {DATABASE}")
            row = conn.execute("show server_version").fetchone()
            self.ledger_version = row[0] if row else "?"
        self.ledger_dsn = self.pg.dsn(DATABASE)
        with psycopg.connect(self.ledger_dsn, autocommit=True) as conn:
            conn.execute(LEDGER_DDL)
        # The cluster.
        self.cluster.start()
        self.cluster.setup_database(DATABASE)
        self.dsn = self.cluster.dsn(DATABASE)
        self.node_dsns = [node.dsn(DATABASE) for node in self.cluster.nodes]
        openqueue_py.install(self.dsn)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("select openqueue.oq_distribute()")
            row = conn.execute(
                "select current_setting('server_version'), extversion"
                " from pg_extension where extname = 'citus'"
            ).fetchone()
            self.server_version = f"PostgreSQL {row[0]}, Citus {row[1]}" if row else "?"
            by_port = queues_per_node(conn, self.config.queues_per_node)
            ports = {node.port: node.name for node in self.cluster.worker_nodes}
            if set(by_port) != set(ports) or any(
                len(q) < self.config.queues_per_node for q in by_port.values()
            ):
                raise RuntimeError(f"queues not spread over both worker nodes: {by_port} (nodes {ports})")
            self.node_queues = {ports[port]: names for port, names in sorted(by_port.items())}
            self.queues = [name for names in self.node_queues.values() for name in names]
            for queue in self.queues:
                conn.execute(
                    "select openqueue.oq_configure_queue(queue_name => %s, max_attempts => %s,"
                    " lease_seconds => %s, backoff_base => '50 milliseconds', backoff_max => '1 second')",
                    (queue, self.config.max_attempts, self.config.lease_seconds),
                )
        placement = "; ".join(f"{name}: {', '.join(q)}" for name, q in self.node_queues.items())
        self.tally.notes.append(f"  queues:     {len(self.queues)}, by worker node: {placement}")

    def describe(self) -> str:
        return (
            f"Citus cluster (coordinator + 2 worker nodes, {self.server_version}),"
            f" ledger on a separate PostgreSQL {self.ledger_version}"
        )

    # -- faults ------------------------------------------------------------------------------

    def _worker_node(self, index: int) -> Node:
        return self.cluster.worker_nodes[index % len(self.cluster.worker_nodes)]

    def _node_fault(self, kind: str, node_name: str, at: float) -> None:
        self.tally.faults.append(
            Fault(kind, 0, node_name, at, time.time(), queues=frozenset(self.node_queues.get(node_name, ())))
        )
        self.tally.counts[f"{node_name} faults"] += 1

    def node_restart(self, index: int) -> None:
        node = self._worker_node(index)
        self._close_admin()
        started, at = time.monotonic(), time.time()
        self.cluster.restart_node(node, "immediate")
        self._node_fault("node restart", node.name, at)
        self.tally.restart_s.append(time.monotonic() - started)
        self.tally.counts["node restarts"] += 1
        self.log(
            f"  {self._now():5.1f} s  {node.name}: pg_ctl restart -m immediate"
            f" ({self.tally.restart_s[-1]:.2f} s)"
        )
        self._await_listeners(node, self._now())

    def node_outage(self, index: int) -> None:
        node = self._worker_node(index)
        self._close_admin()
        started, at = time.monotonic(), time.time()
        self.cluster.stop_node(node, "immediate")
        time.sleep(self.config.outage_seconds)
        self.cluster.start_node(node)
        self._node_fault("node outage", node.name, at)
        self.tally.outage_s.append(time.monotonic() - started)
        self.tally.counts["node outages"] += 1
        self.log(
            f"  {self._now():5.1f} s  {node.name}: stopped (immediate) for {self.tally.outage_s[-1]:.1f} s"
        )
        self._await_listeners(node, self._now())

    def terminate_backends(self) -> None:
        """Terminate 1-3 client backends of the chaos database, on any of the three nodes."""
        found: list[tuple[str, int]] = []
        for dsn in self.node_dsns:
            rows = self._query(
                "select pid from pg_stat_activity where datname = current_database()"
                " and backend_type = 'client backend' and pid <> pg_backend_pid()",
                dsn=dsn,
            )
            found += [(dsn, r[0]) for r in rows or []]
        if not found:
            return
        for dsn, pid in self.rng.sample(found, k=min(len(found), self.rng.choice((1, 1, 2, 3)))):
            done = self._query("select pg_terminate_backend(%s::int)", (pid,), dsn=dsn)
            if done and done[0][0]:
                self.tally.counts["backends terminated"] += 1
                self.tally.counts[f"backends terminated on {self._node_name(dsn)}"] += 1

    def _node_name(self, dsn: str) -> str:
        return self.cluster.nodes[self.node_dsns.index(dsn)].name

    def _await_listeners(self, node: Node, at: float) -> None:
        """Wait until every running, unfrozen worker process LISTENs on ``node`` again.

        The node's restart dropped their LISTEN connections to it; each
        listener must reconnect by itself (``openqueue_py/worker/listener.py``).
        Counted on the node: backends whose last statement is the listener's
        ``listen openqueue; ...``. Measured from the node's return.
        """
        dsn = node.dsn(DATABASE)
        up = time.monotonic()
        count = -1
        while time.monotonic() - up < RELISTEN_BOUND_S:
            expected = sum(1 for w in self.workers if w.proc.poll() is None and w.frozen_at is None)
            rows = self._query(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and query like 'listen openqueue;%%'",
                dsn=dsn,
            )
            count = rows[0][0] if rows else -1
            if count >= expected:
                self.tally.relisten_s.append(time.monotonic() - up)
                return
            time.sleep(0.1)
        self.tally.problems.append(
            f"{node.name}: {RELISTEN_BOUND_S:.0f} s after its return at {at:.1f} s only {count} worker"
            f" processes LISTEN on it again (expected {expected})"
        )

    def check_after(self) -> None:
        """Count the worker calls that met a Citus XX000 node loss (retried as NodeUnavailable)."""
        lines = 0
        for worker in self.workers:
            text = worker.log_path.read_text(errors="replace")
            lines += sum(1 for line in text.splitlines() if "NodeUnavailable" in line)
        recovered = 0
        for node in self.cluster.nodes:
            log = node.data_dir / "server.log"
            if log.exists():
                recovered += log.read_text(errors="replace").count("recovered a prepared transaction")
        interval = CLUSTER_SETTINGS["citus.recover_2pc_interval"]
        self.tally.notes.append(
            f"  citus:      {lines} worker log lines of a call retried after a Citus XX000 node loss"
            f" (NodeUnavailable); {recovered} prepared transactions left by a node's crash and"
            f" recovered by Citus (citus.recover_2pc_interval {interval})"
        )

    def stop_servers(self) -> None:
        """Stop the nodes and the ledger; the nodes' ``server.log`` go to the work dir."""
        try:
            self.cluster.stop()
        finally:
            self.pg.stop()
        for node in self.cluster.nodes:
            log = node.data_dir / "server.log"
            if log.exists():
                shutil.copyfile(log, self.work_dir / f"{node.name}.log")
        shutil.rmtree(self.cluster.root, ignore_errors=True)
