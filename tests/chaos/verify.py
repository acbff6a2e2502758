"""The end-of-run accounting of a chaos run: pure functions over what was collected.

Every job of the run is checked against three independent witnesses: the
producers' files of acknowledged enqueues (key -> job id), the handlers'
ledger (one row per execution: job, attempt, worker pid, start time) and the
faults the driver injected (kills and freezes, with pids and times).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .handlers import FAILURE_MARK

LEASE_EXPIRED = "lease expired"


@dataclass(frozen=True)
class JobRow:
    """One row of ``openqueue.jobs`` at the end of the run."""

    id: int
    key: str | None
    status: str
    attempts: int
    errors: tuple[tuple[int, str], ...]  # (attempt, error) per entry of ``errors``
    result: Any
    queue: str | None = None


@dataclass(frozen=True)
class Execution:
    """One ledger row: a handler call began."""

    job_id: int
    attempt: int
    pid: int
    outcome: str  # "ok" or "fail": what the handler was about to do
    started_at: float  # epoch seconds, database clock


@dataclass(frozen=True)
class Fault:
    """A worker SIGKILLed (``end`` None), one frozen by SIGSTOP or a server down (``at`` to ``end``)."""

    # "kill", "freeze", "restart" / "outage" of the server (pid 0), or, in Citus
    # mode, "node restart" / "node outage" of the worker node named ``worker_id``
    kind: str
    pid: int
    worker_id: str
    at: float
    end: float | None = None
    in_flight: tuple[tuple[int, int], ...] = ()  # (job id, attempt) processing for it at ``at``
    queues: frozenset[str] = frozenset()  # a worker node's fault: the queues that node holds


@dataclass(frozen=True)
class Evidence:
    acked: dict[str, int]  # idempotency key -> acknowledged job id
    ack_conflicts: tuple[str, ...]  # keys acknowledged twice with different ids
    jobs: tuple[JobRow, ...]
    executions: tuple[Execution, ...]
    faults: tuple[Fault, ...]
    completed_logs: Counter[int] = field(default_factory=Counter)  # job id -> job.completed lines
    rejected_logs: frozenset[tuple[int, int]] = frozenset()  # (job, attempt) logged job.ack_rejected


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    kill_recovery: list[float] = field(default_factory=list)
    freeze_recovery: list[float] = field(default_factory=list)
    node_recovery: list[float] = field(default_factory=list)

    def violate(self, what: str, items: Iterable[Any], limit: int = 10) -> None:
        items = list(items)
        if items:
            shown = ", ".join(str(i) for i in items[:limit])
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            self.violations.append(f"{what}: {len(items)}: {shown}{more}")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def verify(evidence: Evidence, recovery_bound_s: float) -> Verdict:
    verdict = Verdict()
    _check_enqueues(evidence, verdict)
    _check_states(evidence, verdict)
    _check_executions(evidence, verdict)
    _check_recovery(evidence, verdict, recovery_bound_s)
    _check_node_recovery(evidence, verdict, recovery_bound_s)
    return verdict


def _check_enqueues(evidence: Evidence, verdict: Verdict) -> None:
    """Every acknowledged enqueue exists exactly once; nothing else exists."""
    by_key: defaultdict[str | None, list[int]] = defaultdict(list)
    for job in evidence.jobs:
        by_key[job.key].append(job.id)
    ids = Counter(job.id for job in evidence.jobs)
    verdict.counts["acked"] = len(evidence.acked)
    verdict.counts["jobs"] = len(ids)
    verdict.violate("keys acknowledged with two different job ids", evidence.ack_conflicts)
    verdict.violate("job ids shown more than once by openqueue.jobs", [i for i, n in ids.items() if n > 1])
    verdict.violate(
        "duplicated jobs (one idempotency key, several jobs)",
        [f"{k}->{v}" for k, v in by_key.items() if k is not None and len(v) > 1],
    )
    verdict.violate("jobs without an idempotency key", by_key.get(None, []))
    lost = [k for k in evidence.acked if k not in by_key]
    verdict.counts["lost"] = len(lost)
    verdict.violate("lost jobs (acknowledged enqueue, no job)", lost)
    verdict.violate(
        "acknowledged id differs from the job holding the key",
        [
            f"{k}: acked {i}, stored {by_key[k]}"
            for k, i in evidence.acked.items()
            if k in by_key and [i] != by_key[k]
        ],
    )
    verdict.violate(
        "jobs nobody acknowledged enqueuing", [k for k in by_key if k is not None and k not in evidence.acked]
    )
    verdict.counts["duplicated"] = sum(len(v) - 1 for k, v in by_key.items() if k is not None and len(v) > 1)


def _check_states(evidence: Evidence, verdict: Verdict) -> None:
    """Every job completed; nothing pending, failed, processing, dead or cancelled."""
    states = Counter(job.status for job in evidence.jobs)
    for state in ("completed", "pending", "failed", "processing", "dead", "cancelled"):
        verdict.counts[state] = states.get(state, 0)
    unfinished = [job.id for job in evidence.jobs if job.status in ("pending", "failed", "processing")]
    verdict.counts["unfinished"] = len(unfinished)
    verdict.violate("unfinished jobs (pending, failed or processing)", unfinished)
    verdict.violate("dead jobs", [job.id for job in evidence.jobs if job.status == "dead"])
    verdict.violate("cancelled jobs", [job.id for job in evidence.jobs if job.status == "cancelled"])
    verdict.violate(
        "jobs whose job.completed was logged more than once",
        [f"{j} x{n}" for j, n in evidence.completed_logs.items() if n > 1],
    )


def _cause(execution: Execution, next_start: float, faults: Sequence[Fault], queue: str | None = None) -> str:
    """Why an execution's lease expired: its worker killed or frozen, a server down, or other.

    A fault explains it when the execution began before the fault ended (1 s
    of slack for clocks) and the job's next attempt began after it began. A
    worker node's fault explains the executions of the jobs of its queues
    ("worker node restart", "worker node outage") before those of the other
    node's ("other worker node restart"...: an ack that waited on the node
    that was down, or a slot held by a retried call).
    """
    for fault in faults:
        if fault.pid != execution.pid or next_start < fault.at:
            continue
        if fault.kind == "kill" and execution.started_at <= fault.at + 1.0:
            return "killed"
        if fault.kind == "freeze" and fault.end is not None and execution.started_at <= fault.end + 1.0:
            return "frozen"

    def overlaps(fault: Fault) -> bool:
        return fault.end is not None and execution.started_at <= fault.end + 1.0 and next_start >= fault.at

    for fault in faults:
        if fault.kind.startswith("node ") and queue in fault.queues and overlaps(fault):
            return f"worker {fault.kind}"
    for fault in faults:
        if fault.kind in ("outage", "restart") and overlaps(fault):
            return f"server {fault.kind}"
    for fault in faults:
        if fault.kind.startswith("node ") and overlaps(fault):
            return f"other worker {fault.kind}"
    return "other"


def _check_executions(evidence: Evidence, verdict: Verdict) -> None:
    """Each attempt accounted for; each execution beyond 1 + failures explained by an expired lease."""
    runs: defaultdict[int, list[Execution]] = defaultdict(list)
    for execution in evidence.executions:
        runs[execution.job_id].append(execution)
    known = {job.id for job in evidence.jobs}
    verdict.violate("ledger rows for unknown jobs", sorted(set(runs) - known))
    bad_attempts: list[str] = []
    double: list[str] = []
    unexplained: list[str] = []
    wrong_result: list[str] = []
    for job in evidence.jobs:
        if job.status != "completed":
            continue
        errors: defaultdict[int, list[str]] = defaultdict(list)
        for attempt, error in job.errors:
            errors[attempt].append(error)
        if sorted(errors) != list(range(1, job.attempts)) or any(len(e) != 1 for e in errors.values()):
            bad_attempts.append(f"{job.id}: attempts={job.attempts} errors at {sorted(errors.items())}")
            continue
        by_attempt: defaultdict[int, list[Execution]] = defaultdict(list)
        for execution in runs.get(job.id, []):
            by_attempt[execution.attempt].append(execution)
        double += [f"{job.id}/{a}: pids {[e.pid for e in ex]}" for a, ex in by_attempt.items() if len(ex) > 1]
        result = job.result if isinstance(job.result, dict) else {}
        final = by_attempt.get(job.attempts, [])
        if result.get("attempt") != job.attempts or [(e.pid, e.outcome) for e in final] != [
            (result.get("pid"), "ok")
        ]:
            wrong_result.append(f"{job.id}: result {job.result}, attempts {job.attempts}, ledger {final}")
        verdict.counts["executions"] += len(runs.get(job.id, []))
        verdict.counts["successful"] += 1
        for attempt in range(1, job.attempts):
            error = errors[attempt][0]
            executions = by_attempt.get(attempt, [])
            if not executions:
                key = "leases never run" if error == LEASE_EXPIRED else "nacked without a ledger row"
                verdict.counts[key] += 1
                if error != LEASE_EXPIRED:
                    unexplained.append(
                        f"{job.id}/{attempt}: nacked ({error.partition(chr(10))[0]}), never ran"
                    )
                continue
            later = [e.started_at for a, ex in by_attempt.items() if a > attempt for e in ex]
            next_start = min(later, default=math.inf)
            for execution in executions:
                if error == LEASE_EXPIRED:
                    verdict.counts["extra"] += 1
                    cause = _cause(execution, next_start, evidence.faults, job.queue)
                    verdict.counts[f"extra: {cause}"] += 1
                    if (job.id, attempt) in evidence.rejected_logs:
                        verdict.counts["rejected after expiry"] += 1
                elif execution.outcome == "fail" and FAILURE_MARK in error:
                    verdict.counts["failures"] += 1
                else:
                    unexplained.append(
                        f"{job.id}/{attempt} pid {execution.pid}: {error.partition(chr(10))[0]}"
                    )
        # Acks that completed the job although the worker logged them as rejected.
        if (job.id, job.attempts) in evidence.rejected_logs:
            verdict.counts["completed but logged ack_rejected"] += 1
    verdict.violate("attempts not accounted for by errors entries", bad_attempts)
    verdict.violate("one attempt executed by two workers (two leases with one attempt number)", double)
    verdict.violate("completed by an execution the ledger does not show", wrong_result)
    verdict.violate("extra executions not explained by a failure or an expired lease", unexplained)


def _check_recovery(evidence: Evidence, verdict: Verdict, bound_s: float) -> None:
    """From each fault to the next execution (by anyone) of each job its worker held."""
    starts: defaultdict[int, list[tuple[int, float]]] = defaultdict(list)
    for execution in evidence.executions:
        starts[execution.job_id].append((execution.attempt, execution.started_at))
    completed = {job.id for job in evidence.jobs if job.status == "completed"}
    expired = {(job.id, a) for job in evidence.jobs for a, e in job.errors if e == LEASE_EXPIRED}
    too_slow: list[str] = []
    never: list[str] = []
    for fault in evidence.faults:
        if fault.kind not in ("kill", "freeze"):
            continue
        held = set(fault.in_flight)
        held |= {
            (e.job_id, e.attempt)
            for e in evidence.executions
            if e.pid == fault.pid and e.started_at <= fault.at
        }
        # Only the jobs the fault actually took away: their lease expired.
        for job_id, attempt in sorted(held & expired):
            later = [t for a, t in starts.get(job_id, []) if a > attempt]
            if not later:
                if job_id in completed:
                    never.append(f"job {job_id} attempt {attempt} ({fault.kind} of pid {fault.pid})")
                continue
            if min(later) <= fault.at:
                continue  # that lease had expired before the fault, for another reason
            delay = min(later) - fault.at
            (verdict.kill_recovery if fault.kind == "kill" else verdict.freeze_recovery).append(delay)
            if fault.kind == "kill" and delay > bound_s:
                too_slow.append(f"job {job_id}: {delay:.1f} s after the kill of pid {fault.pid}")
    verdict.violate(f"killed worker's jobs not run again within {bound_s:.0f} s", too_slow)
    verdict.violate("jobs taken by a fault and completed without running again", never)


def _check_node_recovery(evidence: Evidence, verdict: Verdict, bound_s: float) -> None:
    """After a worker node came back, the jobs of its queues ran again, within ``bound_s``.

    Measured from the node's return (the end of the fault) to the first
    execution of a job of one of its queues that began after it. The
    producers enqueue into every queue all along, so a node whose queues
    stay idle after its return means the workers stalled on it.
    """
    queue_of = {job.id: job.queue for job in evidence.jobs}
    starts = sorted((e.started_at, queue_of.get(e.job_id)) for e in evidence.executions)
    stalled: list[str] = []
    for fault in evidence.faults:
        if not fault.kind.startswith("node ") or fault.end is None:
            continue
        after = [t for t, queue in starts if t > fault.end and queue in fault.queues]
        if not after:
            stalled.append(f"{fault.kind} of {fault.worker_id}: no job of its queues ran after it")
            continue
        delay = after[0] - fault.end
        verdict.node_recovery.append(delay)
        if delay > bound_s:
            stalled.append(f"{fault.kind} of {fault.worker_id}: its queues idle for {delay:.1f} s after it")
    verdict.violate(f"worker node's queues not run again within {bound_s:.0f} s of its return", stalled)
