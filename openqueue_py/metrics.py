"""Prometheus metrics: the queues as the database sees them, and a worker's own.

Two sources, two endpoints:

* :func:`queue_families` turns ``oq_stats()`` (and the last hour of
  ``openqueue.jobs``) into metric families; the dashboard serves them on
  ``/metrics``. They are gauges read from the database at each scrape, so
  any number of dashboards report the same values, and they go down when
  ``oq_purge`` deletes jobs.
* :class:`WorkerMetrics` is one worker's registry: how long its handlers ran
  and how many jobs it processed, by queue and outcome.
  ``Worker(..., metrics_port=9100)`` serves it over HTTP while the worker
  runs.

Needs ``prometheus_client`` (the ``dashboard`` extra:
``pip install 'openqueue[dashboard]'``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .dashboard.queries import QueueRow

# Handler durations: from a millisecond to ten minutes.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
)

# What a handler's run came to, as the worker sees it when the handler returns.
OUTCOMES = ("succeeded", "failed", "lease_lost")


def queue_families(queues: Sequence[QueueRow], last_hour: Mapping[str, tuple[int, int]]) -> list[Metric]:
    """The metric families of ``/metrics``, from the dashboard's reads of ``oq_stats()``.

    ``last_hour``: queue -> (jobs completed, attempts failed) over the last 60 minutes.
    """
    jobs = GaugeMetricFamily(
        "openqueue_queue_jobs", "Jobs of the queue in each state (oq_stats).", labels=["queue", "state"]
    )
    oldest = GaugeMetricFamily(
        "openqueue_queue_oldest_due_age_seconds",
        "Seconds since the run_at of the queue's oldest due job that waits (0 when none is due).",
        labels=["queue"],
    )
    enqueued = GaugeMetricFamily(
        "openqueue_queue_enqueued_jobs",
        "Jobs of the queue stored in the database, whatever their state (oq_purge lowers it).",
        labels=["queue"],
    )
    completed = GaugeMetricFamily(
        "openqueue_queue_completed_jobs",
        "Completed jobs of the queue stored in the database (oq_purge lowers it).",
        labels=["queue"],
    )
    failed = GaugeMetricFamily(
        "openqueue_queue_failed_jobs",
        "Jobs of the queue that failed and wait for their retry.",
        labels=["queue"],
    )
    dead = GaugeMetricFamily(
        "openqueue_queue_dead_jobs",
        "Dead jobs of the queue stored in the database (replay or oq_purge lowers it).",
        labels=["queue"],
    )
    done_hour = GaugeMetricFamily(
        "openqueue_queue_completed_last_hour",
        "Jobs of the queue completed over the last 60 minutes.",
        labels=["queue"],
    )
    failures_hour = GaugeMetricFamily(
        "openqueue_queue_failures_last_hour",
        "Failed attempts (errors recorded) of the queue over the last 60 minutes.",
        labels=["queue"],
    )
    paused = GaugeMetricFamily(
        "openqueue_queue_paused", "1 when the queue is paused (oq_pause_queue), else 0.", labels=["queue"]
    )
    families: list[Metric] = [jobs, oldest, enqueued, completed, failed, dead, done_hour, failures_hour]
    has_paused = False
    for queue in queues:
        for state, count in queue.counts.items():
            jobs.add_metric([queue.name, state], count)
        oldest.add_metric([queue.name], queue.oldest_due_age or 0.0)
        enqueued.add_metric([queue.name], queue.total)
        completed.add_metric([queue.name], queue.counts["completed"])
        failed.add_metric([queue.name], queue.counts["failed"])
        dead.add_metric([queue.name], queue.counts["dead"])
        done, failures = last_hour.get(queue.name, (0, 0))
        done_hour.add_metric([queue.name], done)
        failures_hour.add_metric([queue.name], failures)
        if queue.paused is not None:
            has_paused = True
            paused.add_metric([queue.name], 1.0 if queue.paused else 0.0)
    if has_paused:
        families.append(paused)
    return families


class FamiliesCollector:
    """A registry-like object over fixed families, for ``generate_latest``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkerMetrics:
    """One worker's metrics, in a registry of its own (several workers may share a process).

    * ``openqueue_worker_handler_duration_seconds{queue, outcome}``: a
      histogram of handler run times;
    * ``openqueue_worker_jobs_processed_total{queue, outcome}``: jobs whose
      handler returned (``succeeded``), raised (``failed``), or finished
      after the lease was lost (``lease_lost``, not acked).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._duration = Histogram(
            "openqueue_worker_handler_duration_seconds",
            "How long handlers ran, by queue and outcome.",
            ["queue", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._processed = Counter(
            "openqueue_worker_jobs_processed",
            "Jobs whose handler finished, by queue and outcome.",
            ["queue", "outcome"],
            registry=self.registry,
        )
        # (queue, outcome) -> the two labelled children: one dict lookup per job.
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe(self, queue: str, outcome: str, seconds: float) -> None:
        """A handler finished: ``outcome`` is one of OUTCOMES."""
        children = self._children.get((queue, outcome))
        if children is None:
            children = self._children[(queue, outcome)] = (
                self._duration.labels(queue, outcome),
                self._processed.labels(queue, outcome),
            )
        children[0].observe(seconds)
        children[1].inc()

    def start_server(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve the registry over HTTP (``/metrics``) on a daemon thread; the port bound (0: any free)."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = int(self._server.server_port)
        return self.port

    def stop_server(self) -> None:
        """Stop serving (the registry keeps its values)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self.port = None
