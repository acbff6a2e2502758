"""The shape of a chaos run: its settings and its fault timeline (pure, seeded)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ChaosConfig:
    seconds: float = 60.0
    seed: int = 0
    workers: int = 3
    concurrency: int = 4
    producers: int = 2
    rate: float = 20.0  # logical jobs per second per producer
    lease_seconds: int = 3
    reap_interval: float = 1.0
    poll_interval: float = 1.0
    fail_rate: float = 0.1
    max_attempts: int = 100
    grace_period: float = 30.0
    drain_timeout: float = 300.0
    # Citus mode (tests/chaos/citus.py): a coordinator and two worker nodes,
    # ``queues_per_node`` queues held by each worker node; the server faults
    # are restarts and stops of worker nodes instead of the one server's.
    citus: bool = False
    queues_per_node: int = 3

    @classmethod
    def from_env(cls, default_seconds: float, citus: bool = False) -> ChaosConfig:
        """``CHAOS_SECONDS`` and ``CHAOS_SEED`` (default: a fresh random seed)."""
        seconds = float(os.environ.get("CHAOS_SECONDS") or default_seconds)
        seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
        return cls(seconds=seconds, seed=seed, citus=citus)

    @property
    def freeze_seconds(self) -> float:
        """Longer than a lease plus a reap interval: the frozen worker's leases expire."""
        return self.lease_seconds + self.reap_interval + 2.0

    @property
    def outage_seconds(self) -> float:
        return 4.0 if self.seconds >= 40 else 3.0

    @property
    def recovery_bound(self) -> float:
        """A killed worker's jobs must run again within this: lease + reap interval + 30 s."""
        return self.lease_seconds + self.reap_interval + 30.0


@dataclass(frozen=True, order=True)
class Action:
    at: float  # seconds after the start of the chaos window
    kind: str  # "restart", "outage", "kill", "freeze", "thaw", "terminate", "node restart", "node outage"
    pid: int = 0  # for "thaw"; for the node faults, which worker node (0 or 1)


def plan_faults(config: ChaosConfig, rng: random.Random) -> list[Action]:
    """The fault timeline: server crashes spread evenly, the rest at random."""
    d = config.seconds
    first = "node restart" if config.citus else "restart"
    if config.citus:
        # Worker nodes restarted (immediate) and stopped for a while, each node in turn.
        server = [first] * max(2, round(d / 15)) + ["node outage"] * max(1, round(d / 60))
    else:
        server = [first] * max(2, round(d / 15)) + ["outage"] * max(1, round(d / 120))
    rng.shuffle(server)
    # At least one immediate restart comes first, so that every run sees one early.
    server.insert(0, server.pop(server.index(first)))
    span = 0.8 * d / len(server)
    node = rng.randrange(2) if config.citus else 0  # (the single-server timeline stays replayable)
    actions = [
        Action(0.1 * d + span * (i + 0.5) + rng.uniform(-span / 4, span / 4), kind, (node + i) % 2)
        for i, kind in enumerate(server)
    ]
    actions += [Action(rng.uniform(0.05 * d, 0.95 * d), "kill") for _ in range(max(3, round(d / 5)))]
    freezes = max(1, round(d / 20))
    latest = d - config.freeze_seconds - 1.0
    actions += [Action(min(latest, d * (i + 0.3) / freezes), "freeze") for i in range(freezes)]
    t = 1.0
    while t < d:
        actions.append(Action(t, "terminate"))
        t += rng.uniform(0.8, 1.8)
    return sorted(actions)
