"""The chaos harness itself: its accounting catches what it is there to catch, its plan has the faults."""

from __future__ import annotations

import random
from dataclasses import replace

from .plan import ChaosConfig, plan_faults
from .verify import LEASE_EXPIRED, Evidence, Execution, Fault, JobRow, percentile, verify

FAIL = "ChaosFailure: ChaosFailure job=2 attempt=1\n\nTraceback ..."


def clean() -> Evidence:
    """Job 1 ran once; job 2 failed once, then its second run was killed, the third completed it."""
    return Evidence(
        acked={"p0-0": 1, "p0-1": 2},
        ack_conflicts=(),
        jobs=(
            JobRow(1, "p0-0", "completed", 1, (), {"pid": 10, "attempt": 1}),
            JobRow(2, "p0-1", "completed", 3, ((1, FAIL), (2, LEASE_EXPIRED)), {"pid": 12, "attempt": 3}),
        ),
        executions=(
            Execution(1, 1, 10, "ok", 100.0),
            Execution(2, 1, 10, "fail", 100.0),
            Execution(2, 2, 11, "ok", 101.0),
            Execution(2, 3, 12, "ok", 105.0),
        ),
        faults=(Fault("kill", 11, "w1", 101.5, None, ((2, 2),)),),
    )


def test_a_clean_run_passes_and_explains_the_killed_execution() -> None:
    verdict = verify(clean(), recovery_bound_s=34)
    assert verdict.violations == []
    assert verdict.counts["executions"] == 4 and verdict.counts["failures"] == 1
    assert verdict.counts["extra"] == 1 and verdict.counts["extra: killed"] == 1
    assert verdict.kill_recovery == [3.5]


def test_a_lost_job_a_duplicate_and_an_unfinished_job_are_violations() -> None:
    evidence = clean()
    jobs = (
        evidence.jobs[0],
        JobRow(3, "p0-0", "completed", 1, (), {"pid": 10, "attempt": 1}),
        JobRow(4, "p0-2", "pending", 0, (), None),
    )
    verdict = verify(replace(evidence, jobs=jobs, acked={**evidence.acked, "p0-2": 4}), 34)
    text = "\n".join(verdict.violations)
    assert "lost jobs" in text and "p0-1" in text
    assert "duplicated jobs" in text and "unfinished jobs" in text
    assert (
        verdict.counts["lost"] == 1
        and verdict.counts["duplicated"] == 1
        and verdict.counts["unfinished"] == 1
    )


def test_an_extra_execution_without_an_expired_lease_is_a_violation() -> None:
    evidence = clean()
    # Attempt 1 of job 2 was nacked with the failure text, but the ledger says it succeeded.
    executions = tuple(
        replace(e, outcome="ok") if (e.job_id, e.attempt) == (2, 1) else e for e in evidence.executions
    )
    verdict = verify(replace(evidence, executions=executions), 34)
    assert any("not explained" in v for v in verdict.violations)


def test_two_executions_of_one_attempt_and_a_second_completion_are_violations() -> None:
    evidence = clean()
    executions = (*evidence.executions, Execution(1, 1, 13, "ok", 100.5))
    verdict = verify(replace(evidence, executions=executions, completed_logs={1: 2}), 34)
    text = "\n".join(verdict.violations)
    assert "two workers" in text and "logged more than once" in text


def test_missing_errors_entries_and_a_slow_recovery_are_violations() -> None:
    evidence = clean()
    jobs = (evidence.jobs[0], replace(evidence.jobs[1], errors=((1, FAIL),)))
    assert any("attempts not accounted" in v for v in verify(replace(evidence, jobs=jobs), 34).violations)
    assert any("not run again within 2 s" in v for v in verify(evidence, 2).violations)


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.9) == 4.0
    assert percentile([5.0], 0.5) == 5.0


def test_the_plan_has_the_faults_the_issue_asks_for() -> None:
    for seconds, restarts in ((60, 3), (20, 2), (300, 3)):
        config = ChaosConfig(seconds=seconds)
        for seed in range(20):
            kinds = [a.kind for a in plan_faults(config, random.Random(seed))]
            assert kinds.count("restart") >= restarts and kinds.count("outage") >= 1
            assert kinds.count("kill") >= 3 and kinds.count("freeze") >= 1 and kinds.count("terminate") >= 10
            freezes = [a.at for a in plan_faults(config, random.Random(seed)) if a.kind == "freeze"]
            assert all(at > 0 and at + config.freeze_seconds < seconds for at in freezes)


def on_nodes() -> Evidence:
    """Citus mode: job 2 (queue a, node worker1) lost attempt 2 to worker1's restart; job 1 is in queue b."""
    evidence = clean()
    jobs = (replace(evidence.jobs[0], queue="b"), replace(evidence.jobs[1], queue="a"))
    restart = Fault("node restart", 0, "worker1", 101.5, 101.9, queues=frozenset({"a"}))
    return replace(evidence, jobs=jobs, faults=(restart,))


def test_a_worker_node_fault_explains_the_extra_executions_of_its_own_queues_first() -> None:
    verdict = verify(on_nodes(), 34)
    assert verdict.violations == []
    assert verdict.counts["extra: worker node restart"] == 1
    assert verdict.node_recovery == [105.0 - 101.9]  # job 2's third execution: the next one of queue a
    elsewhere = replace(on_nodes(), jobs=tuple(replace(job, queue="b") for job in on_nodes().jobs))
    restart = replace(on_nodes().faults[0], queues=frozenset({"a"}))
    verdict = verify(replace(elsewhere, faults=(restart,)), 34)
    assert verdict.counts["extra: other worker node restart"] == 1


def test_a_worker_node_whose_queues_stay_idle_after_its_return_is_a_violation() -> None:
    idle = replace(on_nodes().faults[0], at=110.0, end=111.0)
    verdict = verify(replace(on_nodes(), faults=(idle,)), 34)
    assert any("no job of its queues ran after it" in v for v in verdict.violations)
    slow = replace(on_nodes().faults[0], at=60.0, end=61.0)
    verdict = verify(replace(on_nodes(), faults=(slow,)), 34)
    assert any("idle for 39.0 s" in v for v in verdict.violations)


def test_the_citus_plan_restarts_and_stops_both_worker_nodes() -> None:
    for seconds in (20, 25, 60, 150):
        config = ChaosConfig(seconds=seconds, citus=True)
        for seed in range(20):
            plan = plan_faults(config, random.Random(seed))
            kinds = [a.kind for a in plan]
            assert kinds.count("node restart") >= 2 and kinds.count("node outage") >= 1
            assert "restart" not in kinds and "outage" not in kinds
            nodes = {a.pid for a in plan if a.kind.startswith("node ")}
            assert nodes == {0, 1}
