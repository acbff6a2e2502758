"""A model-based test of the job state machine (CONTRACT section 2).

Hypothesis drives random sequences of enqueue, lease, heartbeat, ack, nack,
lease expiry + reap, cancel and replay against the real SQL functions, with
current, stale and made-up lease tokens. A model predicts every job's state;
after each step the database must agree with it and with the contract's
invariants, and every status change must be one of section 2's arrows.

All operations go through one rule that draws which operation to run:
Hypothesis's swarm testing switches whole rules off per example, which with
~30 examples left the retry paths (nack -> failed -> lease) barely exercised.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from psycopg.types.json import Jsonb

QUEUE = "sm"
STATES = {"pending", "processing", "failed", "completed", "dead", "cancelled"}
TERMINAL = {"completed", "dead", "cancelled"}
LIVE = {"pending", "failed", "processing"}

# Section 2, arrow by arrow.
LEGAL_TRANSITIONS = {
    ("pending", "processing"),  # lease
    ("failed", "processing"),  # lease once due again
    ("processing", "completed"),  # ack
    ("processing", "failed"),  # nack with attempts left
    ("processing", "dead"),  # nack without attempts or with retry false; reap without attempts
    ("processing", "pending"),  # reap with attempts left
    ("pending", "cancelled"),
    ("failed", "cancelled"),
    ("processing", "cancelled"),
    ("dead", "pending"),  # replay
    ("cancelled", "pending"),  # replay
}

# Drawn uniformly from this tuple, so repetition is weight: the paths after a
# lease (ack, nack, retry, lease again) need more steps than the others.
# Hypothesis leans towards the first entry (and shrinks towards it): lease.
OPERATIONS = (
    *["lease"] * 3,
    *["nack"] * 2,
    *["ack"] * 2,
    "ack_many",
    "heartbeat",
    "expire",
    "reap",
    "cancel",
    "replay",
    "enqueue",
    "enqueue_batch",
)

PRIORITY = st.integers(-2, 2)
MAX_ATTEMPTS = st.integers(1, 3).map(lambda n: 4 - n)  # leaning to 3: room for retries
# Mostly the current token: the interesting paths need a held lease.
TOKEN_CHOICE = st.sampled_from(["current", "current", "stale", "random"])


@dataclass
class ModelJob:
    status: str
    attempts: int
    max_attempts: int
    priority: int
    token: uuid.UUID | None = None  # the lease that is valid now
    expired: bool = False  # lease moved into the past, not reaped yet
    errors: int = 0  # entries in the job's errors array


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, conn: psycopg.Connection) -> None:
        super().__init__()
        self.conn = conn
        # A clean slate per example; DELETE, not TRUNCATE: far cheaper for a few rows,
        # which matters when Hypothesis replays thousands of examples while shrinking.
        conn.execute(
            "delete from openqueue.live_jobs; delete from openqueue.finished_jobs; "
            "delete from openqueue.idempotency_keys; delete from openqueue.queues"
        )
        self.model: dict[int, ModelJob] = {}
        self.issued: list[uuid.UUID] = []  # every lease token ever handed out
        self.observed: dict[int, str] = {}  # each job's status at the last check
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------

    def _scalar(self, query: str, *params: object) -> object:
        return self.conn.execute(query, params).fetchone()[0]

    def _table(self) -> list[tuple]:
        return self.conn.execute("select * from openqueue.jobs order by id").fetchall()

    def _job(self, data: st.DataObject) -> int | None:
        """Any job, or (half the time, when there is one) a job that is processing."""
        if not self.model:
            return None
        processing = sorted(j for j, m in self.model.items() if m.status == "processing")
        if processing and not data.draw(st.booleans(), label="pick among all jobs"):
            return data.draw(st.sampled_from(processing), label="job")
        return data.draw(st.sampled_from(sorted(self.model)), label="job")

    def _token(self, job_id: int, data: st.DataObject) -> uuid.UUID:
        """The job's current token, a token that is not (or no longer) its lease, or a random one."""
        which = data.draw(TOKEN_CHOICE, label="token")
        current = self.model[job_id].token
        if which == "current" and current is not None:
            return current
        if which != "random":
            others = [t for t in self.issued if t != current]
            if others:
                return data.draw(st.sampled_from(others), label="stale token")
        return uuid.uuid4()

    def _holds(self, job_id: int, token: uuid.UUID) -> bool:
        job = self.model[job_id]
        return job.status == "processing" and job.token == token

    def _enqueue(self, priority: int, max_attempts: int) -> None:
        self.counter += 1
        job_id = self._scalar(
            "select openqueue.oq_enqueue(queue_name => %s, payload => %s, priority => %s, "
            "max_attempts => %s)",
            QUEUE,
            Jsonb({"n": self.counter}),
            priority,
            max_attempts,
        )
        assert job_id not in self.model
        self.model[job_id] = ModelJob("pending", 0, max_attempts, priority)

    # -- the rules ----------------------------------------------------------------------------

    @initialize(jobs=st.lists(st.tuples(PRIORITY, MAX_ATTEMPTS), min_size=1, max_size=4))
    def start_with_some_jobs(self, jobs: list[tuple[int, int]]) -> None:
        for priority, max_attempts in jobs:
            self._enqueue(priority, max_attempts)

    @rule(operation=st.sampled_from(OPERATIONS), data=st.data())
    def step(self, operation: str, data: st.DataObject) -> None:
        event(f"operation {operation}")
        getattr(self, f"do_{operation}")(data)

    # -- the operations ------------------------------------------------------------------------

    def do_enqueue(self, data: st.DataObject) -> None:
        self._enqueue(data.draw(PRIORITY, label="priority"), data.draw(MAX_ATTEMPTS, label="max_attempts"))

    def do_enqueue_batch(self, data: st.DataObject) -> None:
        count = data.draw(st.integers(0, 3), label="batch size")
        priority = data.draw(PRIORITY, label="priority")
        max_attempts = data.draw(MAX_ATTEMPTS, label="max_attempts")
        rows = self.conn.execute(
            "select * from openqueue.oq_enqueue_batch(queue_name => %s, payloads => %s, "
            "priority => %s, max_attempts => %s)",
            (QUEUE, Jsonb([{"batch": i} for i in range(count)]), priority, max_attempts),
        ).fetchall()
        ids = [row[0] for row in rows]
        assert len(ids) == count and ids == sorted(ids)
        for job_id in ids:
            assert job_id not in self.model
            self.model[job_id] = ModelJob("pending", 0, max_attempts, priority)

    def do_lease(self, data: st.DataObject) -> None:
        batch = data.draw(st.integers(1, 4), label="batch_size")
        run_at = dict(self.conn.execute("select id, run_at from openqueue.jobs").fetchall())
        waiting = [j for j, m in self.model.items() if m.status in ("pending", "failed")]
        # Every waiting job is due (retries use retry_in 0): highest priority, oldest run_at, lowest id.
        expected = sorted(waiting, key=lambda j: (-self.model[j].priority, run_at[j], j))[:batch]
        rows = self.conn.execute(
            "select id, attempts, max_attempts, priority, lease_token from openqueue.oq_lease("
            "queue_name => %s, worker_id => 'w', lease_seconds => 60, batch_size => %s)",
            (QUEUE, batch),
        ).fetchall()
        assert [r[0] for r in rows] == expected
        for job_id, attempts, max_attempts, priority, token in rows:
            job = self.model[job_id]
            job.status = "processing"
            job.attempts += 1
            job.token = token
            job.expired = False
            assert (attempts, max_attempts, priority) == (job.attempts, job.max_attempts, job.priority)
            assert token not in self.issued
            self.issued.append(token)

    def do_heartbeat(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        if job_id is None:
            return
        token = self._token(job_id, data)
        valid = self._holds(job_id, token)
        event(f"heartbeat, lease {'held' if valid else 'not held'}")
        before = self._table()
        expiry = self._scalar(
            "select openqueue.oq_heartbeat(job_id => %s, lease_token => %s, lease_seconds => 60)",
            job_id,
            token,
        )
        if valid:
            assert expiry is not None
            assert self._scalar("select %s > now()", expiry)
            self.model[job_id].expired = False
        else:
            assert expiry is None
            assert self._table() == before

    def do_ack(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        if job_id is None:
            return
        token = self._token(job_id, data)
        valid = self._holds(job_id, token)
        event(f"ack, lease {'held' if valid else 'not held'}")
        before = self._table()
        done = self._scalar("select openqueue.oq_ack(job_id => %s, lease_token => %s)", job_id, token)
        assert done is valid
        if valid:
            job = self.model[job_id]
            job.status, job.token, job.expired = "completed", None, False
        else:
            assert self._table() == before

    def do_ack_many(self, data: st.DataObject) -> None:
        """oq_ack_many over a few (job, token) pairs, repeats and wrong tokens included."""
        pairs = []
        for _ in range(data.draw(st.integers(0, 4), label="batch size")):
            job_id = self._job(data)
            if job_id is not None:
                pairs.append((job_id, self._token(job_id, data)))
        expected: list[int] = []
        for job_id, token in pairs:
            if self._holds(job_id, token) and job_id not in expected:
                expected.append(job_id)
        event(f"ack_many, {len(expected)} of {len(pairs)} held")
        before = self._table()
        rows = self.conn.execute(
            "select * from openqueue.oq_ack_many(job_ids => %s::bigint[], lease_tokens => %s::uuid[])",
            ([j for j, _ in pairs], [t for _, t in pairs]),
        ).fetchall()
        assert [r[0] for r in rows] == expected
        for job_id in expected:
            job = self.model[job_id]
            job.status, job.token, job.expired = "completed", None, False
        if not expected:
            assert self._table() == before

    def do_nack(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        if job_id is None:
            return
        token = self._token(job_id, data)
        retry = not data.draw(st.booleans(), label="give up (retry => false)")
        valid = self._holds(job_id, token)
        event(f"nack, lease {'held' if valid else 'not held'}")
        before = self._table()
        outcome = self._scalar(
            "select openqueue.oq_nack(job_id => %s, lease_token => %s, error => 'boom', "
            "retry_in => interval '0', retry => %s)",
            job_id,
            token,
            retry,
        )
        if valid:
            job = self.model[job_id]
            expected = "failed" if retry and job.attempts < job.max_attempts else "dead"
            assert outcome == expected
            job.status, job.token, job.expired = expected, None, False
            job.errors += 1
        else:
            assert outcome is None
            assert self._table() == before

    def do_expire(self, data: st.DataObject) -> None:
        """A lease runs out (moved into the past rather than waited for)."""
        job_id = self._job(data)
        if job_id is None or self.model[job_id].status != "processing":
            return
        self.conn.execute(
            "update openqueue.live_jobs set lease_expires_at = now() - interval '1 second' where id = %s",
            (job_id,),
        )
        self.model[job_id].expired = True

    def do_reap(self, data: st.DataObject) -> None:
        expired = [j for j, m in self.model.items() if m.status == "processing" and m.expired]
        assert self._scalar("select openqueue.oq_reap()") == len(expired)
        for job_id in expired:
            job = self.model[job_id]
            job.status = "dead" if job.attempts >= job.max_attempts else "pending"
            job.token, job.expired = None, False
            job.errors += 1  # "lease expired"

    def do_cancel(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        if job_id is None:
            return
        job = self.model[job_id]
        valid = job.status in LIVE
        before = self._table()
        assert self._scalar("select openqueue.oq_cancel(job_id => %s)", job_id) is valid
        if valid:
            job.status, job.token, job.expired = "cancelled", None, False
        else:
            assert self._table() == before

    def do_replay(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        if job_id is None:
            return
        job = self.model[job_id]
        valid = job.status in ("dead", "cancelled")
        before = self._table()
        assert self._scalar("select openqueue.oq_replay(job_id => %s)", job_id) is valid
        if valid:
            job.status, job.attempts = "pending", 0
        else:
            assert self._table() == before

    # -- after every step ----------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        rows = self.conn.execute(
            "select id, status, attempts, max_attempts, priority, lease_token, lease_expires_at, "
            "finished_at, jsonb_array_length(errors) from openqueue.jobs"
        ).fetchall()
        assert {r[0] for r in rows} == set(self.model)
        for job_id, status, attempts, max_attempts, priority, token, expires, finished, errors in rows:
            job = self.model[job_id]
            assert status in STATES
            assert status == job.status, f"job {job_id}"
            assert (attempts, max_attempts, priority) == (job.attempts, job.max_attempts, job.priority)
            assert errors == job.errors
            assert attempts <= max_attempts
            # processing iff it holds a lease, and the lease is the one the model knows.
            assert (status == "processing") == (token is not None)
            if status == "processing":
                assert token == job.token
                assert expires is not None
            if status in TERMINAL:
                assert finished is not None
            previous = self.observed.get(job_id)
            if previous is not None and previous != status:
                assert (previous, status) in LEGAL_TRANSITIONS, f"job {job_id}: {previous} -> {status}"
                event(f"{previous} -> {status}")
            self.observed[job_id] = status

    @invariant()
    def stats_agree(self) -> None:
        rows = self.conn.execute(
            "select pending, processing, failed, completed, dead, cancelled "
            "from openqueue.oq_stats() where queue_name = %s",
            (QUEUE,),
        ).fetchall()
        counts = dict.fromkeys(("pending", "processing", "failed", "completed", "dead", "cancelled"), 0)
        for job in self.model.values():
            counts[job.status] += 1
        assert rows == ([tuple(counts.values())] if self.model else [])


def test_job_state_machine(conn: psycopg.Connection) -> None:
    run_state_machine_as_test(
        lambda: QueueMachine(conn),
        settings=settings(
            max_examples=30,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
