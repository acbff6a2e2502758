"""What a chaos run did and found, and the summary it prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .plan import ChaosConfig
from .verify import Fault, Verdict, percentile


@dataclass
class Tally:
    """What the driver did and saw, for the summary."""

    faults: list[Fault] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    restart_s: list[float] = field(default_factory=list)
    outage_s: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    producers: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # extra summary lines (Citus mode)
    relisten_s: list[float] = field(default_factory=list)  # worker node up -> all LISTEN on it again


@dataclass(frozen=True)
class Report:
    text: str
    violations: tuple[str, ...]


def _times(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (
        f"n={len(values)} p50 {percentile(values, 0.5):.2f} s, p90 {percentile(values, 0.9):.2f} s,"
        f" max {max(values):.2f} s"
    )


def _spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low}-{high}"


def summary(
    config: ChaosConfig, tally: Tally, server: str, verdict: Verdict, violations: tuple[str, ...], took: float
) -> str:
    """The printed summary; ``server`` describes the PostgreSQL it ran on."""
    t, v = tally, verdict.counts
    retries = sum(p.get("retries", 0) for p in t.producers)
    keys_retried = sum(p.get("keys_retried", 0) for p in t.producers)
    node_lost = sum(p.get("node_lost", 0) for p in t.producers)
    causes = ", ".join(
        f"{k.removeprefix('extra: ')} {n}" for k, n in sorted(v.items()) if k.startswith("extra: ")
    )
    if config.citus:
        servers = (
            f" {t.counts['node restarts']} worker-node restart(s) -m immediate"
            f" ({_spread(t.restart_s, 2)} s each), {t.counts['node outages']} worker-node stop(s)"
            f" ({_spread(t.outage_s, 1)} s each), on nodes {t.counts['worker1 faults']}"
            f" (worker1) + {t.counts['worker2 faults']} (worker2)"
        )
    else:
        servers = (
            f" {t.counts['immediate restarts']} immediate restart(s) ({_spread(t.restart_s, 2)} s each),"
            f" {t.counts['outages']} outage(s) ({_spread(t.outage_s, 1)} s each)"
        )
    lines = [
        f"chaos summary (seed {config.seed}, {config.seconds:.0f} s of faults, {took:.0f} s in all,"
        f" {server}, lease {config.lease_seconds} s,"
        f" reap every {config.reap_interval:g} s)",
        f"  faults:     {t.counts['kills']} workers SIGKILLed, {t.counts['freezes']} frozen for"
        f" {config.freeze_seconds:g} s, {t.counts['backends terminated']} backends terminated,{servers}",
        *t.notes,
        f"  producers:  {v['acked']} enqueues acknowledged; {retries} calls retried with the same key"
        f" ({keys_retried} jobs)"
        + (f", {node_lost} of them after a Citus XX000 'node lost'" if config.citus else ""),
        f"  workers:    {t.counts['workers started']} `openqueue worker` processes,"
        f" {config.concurrency} slots each, {config.workers} at a time",
        f"  jobs:       {v['jobs']} in openqueue.jobs: {v['completed']} completed, {v['pending']} pending,"
        f" {v['failed']} failed, {v['processing']} processing, {v['dead']} dead, {v['cancelled']} cancelled",
        f"  executions: {v['executions']}: {v['successful']} acked,"
        f" {v['failures']} handler failures (nacked),"
        f" {v['extra']} extra after an expired lease ({causes or 'none'});"
        f" {v['leases never run']} leases expired before their handler ran",
        f"  logs:       {v['completed but logged ack_rejected']} jobs completed by an ack the worker"
        f" logged as job.ack_rejected; {v['rejected after expiry']} extra executions"
        " whose ack/nack was rejected",
        f"  recovery after a SIGKILL (kill -> next execution): {_times(verdict.kill_recovery)}"
        f" (bound {config.recovery_bound:g} s)",
        f"  recovery after a freeze (SIGSTOP -> next execution elsewhere): {_times(verdict.freeze_recovery)}",
        *(
            [
                "  recovery after a worker node's return (node up -> next execution of its queues):"
                f" {_times(verdict.node_recovery)}",
                "  listeners after a worker node's return (node up -> every running worker process"
                f" LISTENs on it again): {_times(t.relisten_s)}",
            ]
            if config.citus
            else []
        ),
        f"  lost {v['lost']}, duplicated {v['duplicated']}, unfinished {v['unfinished']}:"
        f" {'PASS' if not violations else 'FAIL'}",
    ]
    lines += [f"  VIOLATION: {violation}" for violation in violations]
    return "\n".join(lines)
