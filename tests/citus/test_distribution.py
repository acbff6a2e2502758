"""Contract section 10 on a Citus cluster: where jobs live, and that every
hot-path call runs on exactly the one worker node holding its queue, with no
two-phase commit (issue 10, done-when 2)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from .cluster import Cluster
from .conftest import DATABASE


def node_port_of(conn: psycopg.Connection, queue: str) -> int:
    """The port of the worker node holding queue's shard of live_jobs."""
    row = conn.execute(
        "select n.nodeport from pg_dist_placement as p join pg_dist_node as n using (groupid)"
        " where p.shardid = get_shard_id_for_distribution_column('openqueue.live_jobs', %s::text)",
        (queue,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_jobs_of_many_queues_land_on_both_workers_in_their_queues_shard(citus_cluster: Cluster, citus_dsn):
    queues = [f"spread_{i}" for i in range(16)]
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        placed = {}
        for queue in queues:
            job_id = conn.execute("select openqueue.oq_enqueue(%s, '{}')", (queue,)).fetchone()[0]
            shard = conn.execute(
                "select get_shard_id_for_distribution_column('openqueue.live_jobs', %s::text)", (queue,)
            ).fetchone()[0]
            placed[job_id] = (queue, node_port_of(conn, queue), shard)
    worker_ports = {node.port for node in citus_cluster.worker_nodes}
    assert {port for _, port, _ in placed.values()} == worker_ports  # both workers hold queues
    for job_id, (queue, port, shard) in placed.items():
        # Read the shard itself on that worker: the row is physically there.
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/oq_citus") as worker:
            row = worker.execute(
                f"select queue_name from openqueue.live_jobs_{shard} where id = %s", (job_id,)
            ).fetchone()
        assert row == (queue,)


HOT_PATH = ["enqueue", "enqueue_batch", "lease", "heartbeat", "ack", "nack", "ack_many"]


def test_each_hot_path_call_runs_on_exactly_one_worker_node_with_no_two_phase_commit(remote_log):
    conn, log = remote_log
    for queue in ("route_a", "route_b", "route_c", "route_d"):
        port = node_port_of(conn, queue)
        prepared_before = conn.execute("select count(*) from pg_dist_transaction").fetchone()[0]
        calls: list[tuple[str, list[tuple[int, str]]]] = []

        def run(name: str, sql: str, params: tuple = (), calls: list = calls) -> list[tuple]:
            log.clear()
            rows = conn.execute(sql, params).fetchall()
            calls.append((name, list(log.entries)))
            return rows

        run("enqueue", "select openqueue.oq_enqueue(%s, '{}')", (queue,))
        run("enqueue_batch", "select * from openqueue.oq_enqueue_batch(%s, '[{}, {}, {}]')", (queue,))
        leased = run(
            "lease", "select id, lease_token from openqueue.oq_lease(%s, 'w', batch_size => 4)", (queue,)
        )
        assert len(leased) == 4
        (a, ta), (b, tb), (c, tc), (d, td) = leased
        beat = run("heartbeat", "select openqueue.oq_heartbeat(%s, %s, queue_name => %s)", (a, ta, queue))
        assert beat[0][0] is not None
        assert run("ack", "select openqueue.oq_ack(%s, %s, queue_name => %s)", (a, ta, queue)) == [(True,)]
        assert run("nack", "select openqueue.oq_nack(%s, %s, 'x', queue_name => %s)", (b, tb, queue)) == [
            ("failed",)
        ]
        done = run(
            "ack_many",
            "select * from openqueue.oq_ack_many(%s, %s, queue_name => %s)",
            ([c, d], [tc, td], queue),
        )
        assert sorted(r[0] for r in done) == sorted([c, d])

        assert [name for name, _ in calls] == HOT_PATH
        for name, entries in calls:
            # Exactly one command left the coordinator: the routed call, to the queue's node.
            assert len(entries) == 1, (queue, name, entries)
            (to_port, command) = entries[0]
            assert to_port == port, (queue, name, entries)
            assert f"openqueue._routed_{name}(" in command, (queue, name, command)
            assert "PREPARE TRANSACTION" not in command and "BEGIN" not in command
        prepared_after = conn.execute("select count(*) from pg_dist_transaction").fetchone()[0]
        assert prepared_after <= prepared_before  # no two-phase commit recorded


class NodeLog:
    """What the worker nodes do inside a routed call, as the coordinator relays it to its client.

    With ``citus.log_remote_commands`` and ``citus.log_local_commands`` on in
    the worker nodes (ALTER SYSTEM, reloaded), a node running a delegated
    call reports each command it sends to another node ("issuing ...") and
    each it runs on its own shards ("executing ... locally"), and the
    coordinator relays those notices with the detail "from HOST:PORT".
    """

    def __init__(self, conn: psycopg.Connection) -> None:
        self.entries: list[tuple[int, str, str]] = []  # (node port, message, detail)
        conn.add_notice_handler(self._notice)

    def _notice(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        detail = diagnostic.message_detail or ""
        match = re.search(r"from [\d.]+:(\d+)", detail)
        if match:
            self.entries.append((int(match[1]), diagnostic.message_primary or "", detail))


@pytest.fixture
def node_logging(citus_cluster: Cluster) -> Iterator[None]:
    """citus.log_remote_commands and log_local_commands on in every worker node, for this test only."""
    settings = ("citus.log_remote_commands", "citus.log_local_commands")

    def configure(on: bool) -> None:
        for node in citus_cluster.worker_nodes:
            with psycopg.connect(node.dsn(), autocommit=True) as conn:
                for name in settings:
                    conn.execute(f"alter system set {name} = on" if on else f"alter system reset {name}")
                conn.execute("select pg_reload_conf()")
        time.sleep(0.5)  # the nodes' sessions read the reload at their next command

    configure(True)
    try:
        yield
    finally:
        configure(False)


def set_on_every_node(cluster: Cluster, name: str, value: str | None) -> None:
    """ALTER SYSTEM SET (None: RESET) a setting on every node, and reload."""
    for node in cluster.nodes:
        with psycopg.connect(node.dsn(), autocommit=True) as conn:
            conn.execute(
                f"alter system set {name} = {value}" if value is not None else f"alter system reset {name}"
            )
            conn.execute("select pg_reload_conf()")


def prepared_transactions(cluster: Cluster) -> dict[int, int]:
    """pg_dist_transaction's rows on every node: one per two-phase commit not yet recovered."""
    counts = {}
    for node in cluster.nodes:
        with psycopg.connect(node.dsn(DATABASE), autocommit=True) as conn:
            counts[node.port] = conn.execute("select count(*) from pg_dist_transaction").fetchone()[0]
    return counts


def test_the_node_running_each_hot_path_call_touches_no_other_node_and_commits_once(
    citus_cluster: Cluster, remote_log, node_logging
):
    """Done-when 2 seen from the worker node that runs the call, not only from the coordinator.

    Version 5 passed the coordinator-side test above while the node running a
    routed oq_enqueue_batch or oq_ack_many copied an intermediate result to
    the other nodes and committed with PREPARE TRANSACTION on them: here
    every command that node runs must be local, and no node records a
    two-phase commit.
    """
    conn, _coordinator_log = remote_log  # its settings relay the nodes' notices to this client
    node_log = NodeLog(conn)
    set_on_every_node(
        citus_cluster, "citus.recover_2pc_interval", "-1"
    )  # keep every 2PC record for the count
    try:
        for queue in ("node_a", "node_b", "node_c", "node_d"):
            port = node_port_of(conn, queue)
            before = prepared_transactions(citus_cluster)
            calls: list[tuple[str, list[tuple[int, str, str]]]] = []

            def run(name: str, sql: str, params: tuple = (), calls: list = calls) -> list[tuple]:
                node_log.entries.clear()
                rows = conn.execute(sql, params).fetchall()
                calls.append((name, list(node_log.entries)))
                return rows

            run("enqueue", "select openqueue.oq_enqueue(%s, '{}')", (queue,))
            ids = run(
                "enqueue_batch", "select * from openqueue.oq_enqueue_batch(%s, '[{}, {}, {}, {}]')", (queue,)
            )
            assert [r[0] for r in ids] == sorted(r[0] for r in ids)  # in array order, ids drawn in order
            leased = run(
                "lease", "select id, lease_token from openqueue.oq_lease(%s, 'w', batch_size => 5)", (queue,)
            )
            assert len(leased) == 5
            (a, ta), (b, tb), (c, tc), (d, td), (e, te) = leased
            run("heartbeat", "select openqueue.oq_heartbeat(%s, %s, queue_name => %s)", (a, ta, queue))
            assert run("ack", "select openqueue.oq_ack(%s, %s, queue_name => %s)", (a, ta, queue)) == [
                (True,)
            ]
            assert run("nack", "select openqueue.oq_nack(%s, %s, 'x', queue_name => %s)", (b, tb, queue)) == [
                ("failed",)
            ]
            done = run(
                "ack_many",
                "select * from openqueue.oq_ack_many(%s, %s, array['1', null, '{\"r\": 3}']::jsonb[],"
                " queue_name => %s)",
                ([e, c, d], [te, tc, td], queue),
            )
            assert [r[0] for r in done] == [e, c, d]  # input order, as on one PostgreSQL
            results = dict(
                conn.execute(
                    "select id, result from openqueue.jobs where id = any(%s)", ([c, d, e],)
                ).fetchall()
            )
            assert results == {e: 1, c: None, d: {"r": 3}}

            assert [name for name, _ in calls] == HOT_PATH
            for name, entries in calls:
                assert entries, (queue, name, "the node reported nothing: is its logging on?")
                for node_port, message, _detail in entries:
                    assert node_port == port, (queue, name, node_port, message)
                    assert message.startswith("executing the c"), "\n".join(
                        [f"{queue} {name} on node {port}:"] + [f"  {p}: {m[:300]}" for p, m, _ in entries]
                    )
                    assert "PREPARE TRANSACTION" not in message
            assert prepared_transactions(citus_cluster) == before, (queue, "a two-phase commit was recorded")
    finally:
        set_on_every_node(citus_cluster, "citus.recover_2pc_interval", None)


def test_inside_a_transaction_block_calls_run_from_the_coordinator_and_commit_across_nodes(remote_log):
    """Section 10: not routed inside a block (the coordinator notifies), two nodes commit with 2PC."""
    conn, log = remote_log
    queues = [f"block_{i}" for i in range(8)]
    ports = {q: node_port_of(conn, q) for q in queues}
    first = queues[0]
    second = next(q for q in queues if ports[q] != ports[first])
    log.clear()
    with conn.transaction():
        conn.execute("select openqueue.oq_enqueue(%s, '{}')", (first,))
        conn.execute("select openqueue.oq_enqueue(%s, '{}')", (second,))
    commands = [command for _, command in log.entries]
    assert not any("_routed_" in command for command in commands)
    assert sum(command.startswith("PREPARE TRANSACTION") for command in commands) == 2
    counts = conn.execute(
        "select count(*) from openqueue.jobs where queue_name in (%s, %s)", (first, second)
    ).fetchone()
    assert counts == (2,)


@pytest.mark.parametrize(
    ("sql", "state"),
    [
        ("select openqueue.oq_enqueue(NULL, '{}')", "22004"),
        ("select * from openqueue.oq_lease(NULL, 'w')", "22004"),
        ("select * from openqueue.oq_enqueue_batch(NULL, '[]')", "22004"),
        ("select openqueue.oq_enqueue('bad name', '{}')", "22023"),
    ],
)
def test_null_and_bad_queue_names_raise_before_routing_and_the_coordinator_lives(citus_dsn, sql, state):
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(sql)
        assert raised.value.sqlstate == state
        assert conn.execute("select 1").fetchone() == (1,)


def test_calls_without_a_queue_name_still_work_through_the_coordinator(citus_dsn):
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("select openqueue.oq_enqueue('noqueue_arg', '{}')")
        job_id, token = conn.execute(
            "select id, lease_token from openqueue.oq_lease('noqueue_arg', 'w')"
        ).fetchone()
        assert (
            conn.execute("select openqueue.oq_heartbeat(%s, %s)", (job_id, token)).fetchone()[0] is not None
        )
        assert conn.execute("select openqueue.oq_ack(%s, %s)", (job_id, token)).fetchone() == (True,)
        assert conn.execute("select status from openqueue.jobs where id = %s", (job_id,)).fetchone() == (
            "completed",
        )


def test_concurrent_leasing_of_one_queue_from_many_connections_hands_each_job_out_once(citus_dsn):
    queue = "concurrent_lease"
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        expected = {
            r[0]
            for r in conn.execute(
                "select * from openqueue.oq_enqueue_batch("
                "%s, (select jsonb_agg(g) from generate_series(1, 300) as g))",
                (queue,),
            )
        }
    got: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def lease_until_empty() -> None:
        try:
            with psycopg.connect(citus_dsn, autocommit=True) as own:
                while True:
                    rows = own.execute(
                        "select id, lease_token from openqueue.oq_lease(%s, 'w', batch_size => 7)", (queue,)
                    ).fetchall()
                    if not rows:
                        return
                    with lock:
                        got.extend(r[0] for r in rows)
                    own.execute(
                        "select * from openqueue.oq_ack_many(%s, %s, queue_name => %s)",
                        ([r[0] for r in rows], [r[1] for r in rows], queue),
                    ).fetchall()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=lease_until_empty) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected


def test_distribute_again_changes_nothing(citus_dsn):
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        before = conn.execute(
            "select logicalrelid::text, colocationid, partkey from pg_dist_partition order by 1"
        ).fetchall()
        functions = conn.execute(
            "select objid::regprocedure::text, distribution_argument_index, colocationid"
            " from pg_dist_object where classid = 'pg_proc'::regclass order by 1"
        ).fetchall()
        conn.execute("select openqueue.oq_distribute()")
        assert (
            conn.execute(
                "select logicalrelid::text, colocationid, partkey from pg_dist_partition order by 1"
            ).fetchall()
            == before
        )
        assert (
            conn.execute(
                "select objid::regprocedure::text, distribution_argument_index, colocationid"
                " from pg_dist_object where classid = 'pg_proc'::regclass order by 1"
            ).fetchall()
            == functions
        )
        # Every table with queue_name co-located; cron_schedules (keyed by
        # schedule_name) a reference table, copied to every node.
        assert len({row[1] for row in before if row[2] is not None}) == 1
        assert [row[0] for row in before if row[2] is None] == ["openqueue.cron_schedules"]


def test_an_upgrade_run_of_the_installer_keeps_the_installation_distributed_and_routed(citus_dsn, remote_log):
    import openqueue_py

    openqueue_py.install(citus_dsn)
    conn, log = remote_log
    log.clear()
    conn.execute("select openqueue.oq_enqueue('after_reinstall', '{}')")
    assert len(log.entries) == 1 and "_routed_enqueue(" in log.entries[0][1]


def test_reap_reclaims_expired_leases_of_queues_on_both_nodes(remote_log):
    """oq_reap on Citus (admin and worker maintenance, not the hot path): every queue's expired leases.

    Citus runs FOR UPDATE on one shard only: oq_reap reaps queue by queue,
    each with statements filtered on its queue name. The first read spans
    the shards, so the per-queue calls run from the coordinator (not
    delegated), in one distributed transaction.
    """
    conn, _ = remote_log
    queues: dict[int, str] = {}
    index = 0
    while len(queues) < 2:
        queues.setdefault(node_port_of(conn, f"reap_{index}"), f"reap_{index}")
        index += 1
    for queue in queues.values():
        conn.execute("select openqueue.oq_enqueue_batch(%s, '[1, 2]')", (queue,))
        conn.execute("select openqueue.oq_enqueue(%s, '3', max_attempts => 1)", (queue,))
        conn.execute("select * from openqueue.oq_lease(%s, 'w', batch_size => 3)", (queue,)).fetchall()
    # The table itself (as its owner): UPDATE through the view openqueue.jobs
    # fails on Citus 14 (docs/scaling.md, limits).
    for queue in queues.values():
        conn.execute(
            "update openqueue.live_jobs set lease_expires_at = now() - interval '1 second'"
            " where queue_name = %s",
            (queue,),
        )
    assert conn.execute("select openqueue.oq_reap()").fetchone()[0] >= 6
    for queue in queues.values():
        assert conn.execute(
            "select status, count(*) from openqueue.jobs where queue_name = %s group by 1 order by 1",
            (queue,),
        ).fetchall() == [("dead", 1), ("pending", 2)]
        errors = conn.execute(
            "select errors from openqueue.jobs where queue_name = %s and status = 'pending'", (queue,)
        ).fetchall()
        assert all(e[0][-1]["error"] == "lease expired" and e[0][-1]["attempt"] == 1 for e in errors)
