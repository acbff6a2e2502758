"""The chaos driver: a private PostgreSQL, producers, `openqueue worker` processes, and faults.

``run_chaos(config, work_dir)`` runs one bounded chaos run and returns a
:class:`Report` (its ``text`` is the printed summary, ``violations`` what
failed). Standalone: ``python -m tests.chaos.driver --seconds 300``.

The server is always a private embedded PostgreSQL started here (even when
``OPENQUEUE_TEST_DSN`` names another server): the driver crash-restarts it.
It runs with ``synchronous_commit = on``, so an acknowledged commit survives
``pg_ctl restart -m immediate`` (``fsync`` stays off: the operating system
does not crash, only PostgreSQL does).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

import openqueue_py
from openqueue_py.embedded import EmbeddedPostgres

from .handlers import DSN_ENV, FAIL_RATE_ENV
from .plan import Action, ChaosConfig, plan_faults
from .report import Report, Tally, summary
from .verify import Evidence, Execution, Fault, JobRow, verify

REPO = Path(__file__).resolve().parents[2]
QUEUE = "chaos"
HANDLER = "tests.chaos.handlers:handle"
SERVER_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "max_connections": "200",
}
LEDGER_DDL = """
create schema chaos;
create table chaos.ledger (
    job_id bigint not null,
    attempt integer not null,
    pid integer not null,
    outcome text not null,
    started_at timestamptz not null default clock_timestamp(),
    primary key (job_id, attempt, pid)
);
"""
_DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


@dataclass
class WorkerProcess:
    worker_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float
    frozen_at: float | None = None
    killed: bool = False


class ChaosRun:
    def __init__(self, config: ChaosConfig, work_dir: Path, log: Callable[[str], None]) -> None:
        self.config = config
        self.work_dir = work_dir
        self.log = log
        self.rng = random.Random(config.seed)
        self.pg = EmbeddedPostgres(settings=SERVER_SETTINGS)
        self.dsn = ""
        self.ledger_dsn = ""  # the handlers' ledger (here: the same database)
        self.queues: list[str] = [QUEUE]
        self.server_version = ""
        self.workers: list[WorkerProcess] = []
        self.producers: list[subprocess.Popen[bytes]] = []
        self.tally = Tally()
        self._admin: dict[str, psycopg.Connection] = {}  # the driver's connections, by DSN
        self._frozen_in_flight: dict[int, tuple[tuple[int, int], ...]] = {}
        self._t0 = 0.0

    # -- set-up ------------------------------------------------------------------------------

    def start_server(self) -> None:
        self.pg.start()
        self.pg.restart("fast")  # max_connections needs a restart
        with psycopg.connect(self.pg.dsn(), autocommit=True) as conn:
            conn.execute("create database chaos")
            row = conn.execute("show server_version").fetchone()
            self.server_version = row[0] if row else "?"
        self.dsn = self.ledger_dsn = self.pg.dsn("chaos")
        openqueue_py.install(self.dsn)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(LEDGER_DDL)
            conn.execute(
                "select openqueue.oq_configure_queue(queue_name => %s, max_attempts => %s,"
                " lease_seconds => %s, backoff_base => '50 milliseconds', backoff_max => '1 second')",
                (QUEUE, self.config.max_attempts, self.config.lease_seconds),
            )

    def _env(self) -> dict[str, str]:
        env = {**os.environ, DSN_ENV: self.ledger_dsn, FAIL_RATE_ENV: str(self.config.fail_rate)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env.pop("OPENQUEUE_DSN", None)
        return env

    def start_worker(self) -> WorkerProcess:
        c = self.config
        worker_id = f"chaos-w{len(self.workers)}"
        log_path = self.work_dir / f"{worker_id}.log"
        queues = [arg for queue in self.queues for arg in ("--queue", f"{queue}={HANDLER}")]
        command = [
            sys.executable, "-m", "openqueue_py", "worker", "--dsn", self.dsn,
            *queues, "--concurrency", str(c.concurrency),
            "--lease-seconds", str(c.lease_seconds), "--reap-interval", str(c.reap_interval),
            "--poll-interval", str(c.poll_interval), "--grace-period", str(c.grace_period),
            "--worker-id", worker_id,
        ]  # fmt: skip
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(worker_id, proc, log_path, time.monotonic())
        self.workers.append(worker)
        self.tally.counts["workers started"] += 1
        self._wait_started(worker)
        return worker

    def _wait_started(self, worker: WorkerProcess, timeout: float = 15.0) -> None:
        """Until the worker logged worker.started (or exited): the next fault waits for it.

        A worker that cannot reach the database while it starts exits at once
        with status 3, by design (`openqueue worker` fails fast on what looks
        like a configuration error). Without this wait, a replacement started
        right after a kill could meet the outage or restart planned next,
        and the run would report the harness's own timing as a violation. A
        worker that exits here is still reported by _check_workers.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.proc.poll() is None:
            if b"worker.started" in worker.log_path.read_bytes():
                return
            time.sleep(0.05)

    def start_producers(self) -> None:
        for n in range(self.config.producers):
            command = [
                sys.executable, "-m", "tests.chaos.producer", "--dsn", self.dsn,
                "--out", str(self.work_dir / f"producer-{n}.tsv"), "--prefix", f"p{n}",
                "--rate", str(self.config.rate), "--max-attempts", str(self.config.max_attempts),
                "--queues", ",".join(self.queues),
            ]  # fmt: skip
            self.producers.append(
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env=self._env(),
                    stdout=subprocess.PIPE,
                    stderr=open(self.work_dir / f"producer-{n}.err", "wb"),  # noqa: SIM115
                    start_new_session=True,
                )
            )

    # -- database helpers (the driver's own connection; None while the server is down) --------

    def _query(
        self, sql: str, params: tuple[Any, ...] = (), dsn: str | None = None
    ) -> list[tuple[Any, ...]] | None:
        """``sql`` on the driver's connection to ``dsn`` (the queue's DSN by default); None on failure.

        On Citus a node that is down makes the coordinator raise other errors
        than a lost connection (``_DB_ERRORS``): those answer None too.
        """
        dsn = dsn or self.dsn
        for _ in range(2):
            try:
                admin = self._admin.get(dsn)
                if admin is None or admin.closed:
                    admin = self._admin[dsn] = psycopg.connect(dsn, autocommit=True, connect_timeout=3)
                return admin.execute(sql, params).fetchall()
            except _DB_ERRORS:
                self._close_admin(dsn)
            except psycopg.Error:
                if not self.config.citus:
                    raise
                self._close_admin(dsn)
                return None
        return None

    def _close_admin(self, dsn: str | None = None) -> None:
        for key in [dsn] if dsn else list(self._admin):
            admin = self._admin.pop(key, None) if key else None
            if admin is not None:
                with contextlib.suppress(psycopg.Error):
                    admin.close()

    def _in_flight(self, worker_id: str) -> tuple[tuple[int, int], ...]:
        rows = self._query(
            "select id, attempts from openqueue.jobs where status = 'processing' and leased_by = %s",
            (worker_id,),
        )
        return tuple((r[0], r[1]) for r in rows or [])

    # -- faults ------------------------------------------------------------------------------

    def _victim(self) -> WorkerProcess | None:
        """A running, unfrozen worker up for at least a second, preferring the busiest."""
        now = time.monotonic()
        candidates = [
            w for w in self.workers
            if w.proc.poll() is None and w.frozen_at is None and not w.killed and now - w.started > 1.0
        ]  # fmt: skip
        if not candidates:
            return None
        rows = self._query(
            "select leased_by, count(*) from openqueue.jobs where status = 'processing' group by leased_by"
        )
        busy = dict(rows or [])
        return max(candidates, key=lambda w: (busy.get(w.worker_id, 0), self.rng.random()))

    def kill(self) -> None:
        victim = self._victim()
        if victim is None:
            return
        victim.proc.kill()
        at = time.time()
        victim.killed = True
        victim.proc.wait(30)
        in_flight = self._in_flight(victim.worker_id)
        self.tally.faults.append(Fault("kill", victim.proc.pid, victim.worker_id, at, None, in_flight))
        self.tally.counts["kills"] += 1
        self.log(
            f"  {self._now():5.1f} s  SIGKILL {victim.worker_id} (pid {victim.proc.pid}),"
            f" {len(in_flight)} jobs in flight"
        )
        self.start_worker()

    def freeze(self) -> Action | None:
        victim = self._victim()
        if victim is None:
            return None
        victim.proc.send_signal(signal.SIGSTOP)
        victim.frozen_at = time.time()
        in_flight = self._in_flight(victim.worker_id)  # stuck now: their leases will expire
        self._frozen_in_flight[victim.proc.pid] = in_flight
        self.log(
            f"  {self._now():5.1f} s  SIGSTOP {victim.worker_id} (pid {victim.proc.pid}),"
            f" {len(in_flight)} jobs in flight"
        )
        return Action(self._now() + self.config.freeze_seconds, "thaw", victim.proc.pid)

    def thaw(self, pid: int) -> None:
        for worker in self.workers:
            if worker.proc.pid == pid and worker.frozen_at is not None:
                worker.proc.send_signal(signal.SIGCONT)
                in_flight = self._frozen_in_flight.pop(pid, ())
                self.tally.faults.append(
                    Fault("freeze", pid, worker.worker_id, worker.frozen_at, time.time(), in_flight)
                )
                self.tally.counts["freezes"] += 1
                self.log(
                    f"  {self._now():5.1f} s  SIGCONT {worker.worker_id}"
                    f" after {time.time() - worker.frozen_at:.1f} s"
                )
                worker.frozen_at = None

    def terminate_backends(self) -> None:
        rows = self._query(
            "select pid from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend' and pid <> pg_backend_pid()"
        )
        if not rows:
            return
        pids = self.rng.sample([r[0] for r in rows], k=min(len(rows), self.rng.choice((1, 1, 2, 3))))
        done = self._query(
            "select count(*) filter (where pg_terminate_backend(p)) from unnest(%s::int[]) p", (pids,)
        )
        self.tally.counts["backends terminated"] += done[0][0] if done else 0

    def restart(self) -> None:
        self._close_admin()
        started, at = time.monotonic(), time.time()
        self.pg.restart("immediate")
        self.tally.faults.append(Fault("restart", 0, "", at, time.time()))
        self.tally.restart_s.append(time.monotonic() - started)
        self.tally.counts["immediate restarts"] += 1
        self.log(f"  {self._now():5.1f} s  pg_ctl restart -m immediate ({self.tally.restart_s[-1]:.2f} s)")

    def outage(self) -> None:
        self._close_admin()
        started, at = time.monotonic(), time.time()
        self.pg.pg_ctl("-w", "-m", "immediate", "stop")
        time.sleep(self.config.outage_seconds)
        self.pg.pg_ctl("-w", "restart")  # starts it again with the options it had (postmaster.opts)
        self.tally.faults.append(Fault("outage", 0, "", at, time.time()))
        self.tally.outage_s.append(time.monotonic() - started)
        self.tally.counts["outages"] += 1
        self.log(f"  {self._now():5.1f} s  outage: stopped (immediate) for {self.tally.outage_s[-1]:.1f} s")

    def node_restart(self, index: int) -> None:
        raise NotImplementedError("worker nodes exist in Citus mode only (tests/chaos/citus.py)")

    def node_outage(self, index: int) -> None:
        raise NotImplementedError("worker nodes exist in Citus mode only (tests/chaos/citus.py)")

    def describe(self) -> str:
        """The server(s) the run used, for the summary."""
        server = f"private embedded PostgreSQL {self.server_version}"
        if os.environ.get("OPENQUEUE_TEST_DSN"):
            server += ", not OPENQUEUE_TEST_DSN's server"
        return server

    def check_after(self) -> None:
        """Checks of the run's logs beyond verify.py's accounting (Citus mode adds some)."""

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _check_workers(self) -> None:
        """A worker that exits on its own is a failure; it is replaced so the run goes on."""
        for worker in list(self.workers):
            if not worker.killed and worker.proc.poll() is not None:
                worker.killed = True
                tail = worker.log_path.read_text(errors="replace")[-2000:]
                self.tally.problems.append(
                    f"{worker.worker_id} exited on its own with status {worker.proc.returncode}: ...{tail}"
                )
                self.start_worker()

    # -- the run -----------------------------------------------------------------------------

    def chaos(self) -> None:
        """Execute the fault timeline over the chaos window."""
        plan = plan_faults(self.config, self.rng)
        heapq.heapify(plan)
        self._t0 = time.monotonic()
        while plan:
            action = heapq.heappop(plan)
            while (wait := action.at - self._now()) > 0:
                time.sleep(min(wait, 0.2))
                self._check_workers()
            match action.kind:
                case "restart":
                    self.restart()
                case "outage":
                    self.outage()
                case "kill":
                    self.kill()
                case "freeze":
                    thaw = self.freeze()
                    if thaw is not None:
                        heapq.heappush(plan, thaw)
                case "thaw":
                    self.thaw(action.pid)
                case "terminate":
                    self.terminate_backends()
                case "node restart":
                    self.node_restart(action.pid)
                case "node outage":
                    self.node_outage(action.pid)
        while self._now() < self.config.seconds:
            time.sleep(0.2)
            self._check_workers()

    def drain(self) -> None:
        """Stop producers, let the workers finish everything, stop them, reap until nothing is processing."""
        for producer in self.producers:
            producer.send_signal(signal.SIGTERM)
        for n, producer in enumerate(self.producers):
            try:
                out, _ = producer.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                producer.kill()
                out, _ = producer.communicate()
            err = (self.work_dir / f"producer-{n}.err").read_text(errors="replace")
            if producer.returncode != 0:
                self.tally.problems.append(f"producer p{n} exited with {producer.returncode}: {err[-2000:]}")
            lines = out.decode(errors="replace").strip().splitlines()
            if lines:
                self.tally.producers.append(json.loads(lines[-1]))
        self.log(f"  {self._now():5.1f} s  producers stopped; draining")
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            rows = self._query(
                "select count(*) from openqueue.jobs where queue_name = any(%s)"
                " and status in ('pending', 'failed', 'processing')",
                (self.queues,),
            )
            if rows is not None and rows[0][0] == 0:
                break
            time.sleep(0.5)
            self._check_workers()
        self.log(f"  {self._now():5.1f} s  drained; stopping workers")
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.killed:
                continue
            try:
                status = worker.proc.wait(self.config.grace_period + 30)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                status = worker.proc.wait(30)
            if status != 0:
                tail = worker.log_path.read_text(errors="replace")[-2000:]
                self.tally.problems.append(
                    f"{worker.worker_id} exited with {status} after SIGTERM: ...{tail}"
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = self._query("select count(*) from openqueue.jobs where status = 'processing'")
            if rows is not None and rows[0][0] == 0:
                break
            self._query("select openqueue.oq_reap()")
            time.sleep(0.5)

    def collect(self) -> Evidence:
        acked: dict[str, int] = {}
        conflicts: list[str] = []
        for path in sorted(self.work_dir.glob("producer-*.tsv")):
            for line in path.read_text().splitlines():
                key, _, job_id = line.partition("\t")
                if key in acked and acked[key] != int(job_id):
                    conflicts.append(key)
                acked[key] = int(job_id)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            jobs = tuple(
                JobRow(
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    tuple((int(e["attempt"]), str(e["error"])) for e in r[4]),
                    r[5],
                    r[6],
                )
                for r in conn.execute(
                    "select id, idempotency_key, status, attempts, errors, result, queue_name"
                    " from openqueue.jobs"
                ).fetchall()
            )
        with psycopg.connect(self.ledger_dsn, autocommit=True) as conn:
            executions = tuple(
                Execution(*r)
                for r in conn.execute(
                    "select job_id, attempt, pid, outcome, extract(epoch from started_at)::float8"
                    " from chaos.ledger"
                ).fetchall()
            )
        completed: Counter[int] = Counter()
        rejected: set[tuple[int, int]] = set()
        pattern = re.compile(r" (job\.completed|job\.ack_rejected) .*?\bjob_id=(\d+)\b.*?\battempt=(\d+)\b")
        for worker in self.workers:
            for match in pattern.finditer(worker.log_path.read_text(errors="replace")):
                if match[1] == "job.completed":
                    completed[int(match[2])] += 1
                else:
                    rejected.add((int(match[2]), int(match[3])))
        return Evidence(
            acked,
            tuple(conflicts),
            jobs,
            executions,
            tuple(self.tally.faults),
            completed,
            frozenset(rejected),
        )

    def cleanup(self) -> None:
        self._close_admin()
        for process in [w.proc for w in self.workers] + self.producers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait(30)
        self.stop_servers()

    def stop_servers(self) -> None:
        self.pg.stop()


def run_chaos(config: ChaosConfig, work_dir: Path, log: Callable[[str], None] = print) -> Report:
    """One bounded chaos run; the report's text is the summary to print."""
    if config.citus:
        from .citus import CitusChaosRun

        run: ChaosRun = CitusChaosRun(config, work_dir, log)
    else:
        run = ChaosRun(config, work_dir, log)
    started = time.monotonic()
    try:
        run.start_server()
        note = " (OPENQUEUE_TEST_DSN is not used: chaos crash-restarts its servers)"
        log(
            f"chaos: {config.seconds:.0f} s, seed {config.seed}, {run.describe().split(', not ')[0]}"
            f"{note if os.environ.get('OPENQUEUE_TEST_DSN') else ''}; logs in {work_dir}"
        )
        run.start_producers()
        for _ in range(config.workers):
            run.start_worker()
        run.chaos()
        run.drain()
        evidence = run.collect()
        run.check_after()
    finally:
        run.cleanup()
    verdict = verify(evidence, config.recovery_bound)
    violations = tuple(run.tally.problems + verdict.violations)
    text = summary(config, run.tally, run.describe(), verdict, violations, time.monotonic() - started)
    return Report(text, violations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one chaos run and print its summary.")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--citus", action="store_true", help="on a Citus cluster (coordinator + 2 worker nodes)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and producer files (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    config = ChaosConfig.from_env(args.seconds, citus=args.citus)
    config = replace(config, seconds=args.seconds, seed=args.seed if args.seed is not None else config.seed)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="openqueue-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    report = run_chaos(config, work_dir, log=lambda line: print(line, flush=True))
    print(report.text, flush=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
