"""/metrics of the dashboard, and the worker's own metrics endpoint, read with prometheus_client's parser."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from openqueue_py import Client, Worker
from openqueue_py.errors import WorkerError

from .conftest import complete, make_dead, wait_until


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not exposed; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def test_metrics_expose_jobs_by_queue_and_state_oldest_due_age_and_totals(
    dash: TestClient, client: Client, conn: psycopg.Connection
) -> None:
    for _ in range(4):
        client.enqueue(queue_name="emails", payload={})
    conn.execute(
        "update openqueue.jobs set run_at = now() - interval '90 seconds' where queue_name = 'emails'"
    )
    complete(client, "reports")
    complete(client, "reports")
    make_dead(client, "reports", ["one", "two", "three"])

    response = dash.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)

    assert _value(samples, "openqueue_queue_jobs", queue="emails", state="pending") == 4
    assert _value(samples, "openqueue_queue_jobs", queue="emails", state="dead") == 0
    assert _value(samples, "openqueue_queue_jobs", queue="reports", state="completed") == 2
    assert _value(samples, "openqueue_queue_jobs", queue="reports", state="dead") == 1
    assert 90 <= _value(samples, "openqueue_queue_oldest_due_age_seconds", queue="emails") < 3600
    assert _value(samples, "openqueue_queue_oldest_due_age_seconds", queue="reports") == 0
    assert _value(samples, "openqueue_queue_enqueued_jobs", queue="emails") == 4
    assert _value(samples, "openqueue_queue_enqueued_jobs", queue="reports") == 3
    assert _value(samples, "openqueue_queue_completed_jobs", queue="reports") == 2
    assert _value(samples, "openqueue_queue_dead_jobs", queue="reports") == 1
    assert _value(samples, "openqueue_queue_failed_jobs", queue="reports") == 0
    assert _value(samples, "openqueue_queue_completed_last_hour", queue="reports") == 2
    assert _value(samples, "openqueue_queue_failures_last_hour", queue="reports") == 3
    assert _value(samples, "openqueue_queue_failures_last_hour", queue="emails") == 0


def test_metrics_follow_the_database(dash: TestClient, client: Client) -> None:
    assert not [k for k in _samples(dash.get("/metrics").text) if k[0] == "openqueue_queue_jobs"]
    client.enqueue(queue_name="q", payload={})
    assert (
        _value(_samples(dash.get("/metrics").text), "openqueue_queue_jobs", queue="q", state="pending") == 1
    )
    leased = client.lease(queue_name="q", worker_id="w")
    assert leased is not None and client.ack(leased.job.id, leased.lease_token)
    client.enqueue(queue_name="q", payload={})
    samples = _samples(dash.get("/metrics").text)
    assert _value(samples, "openqueue_queue_jobs", queue="q", state="completed") == 1
    assert _value(samples, "openqueue_queue_jobs", queue="q", state="pending") == 1


def _scrape(port: int) -> dict[Any, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return _samples(response.read().decode())


def test_worker_serves_handler_durations_and_processed_counts_while_it_drains(
    dsn: str, client: Client
) -> None:
    release = threading.Event()

    def handle(job: Any) -> Any:
        if job.payload.get("hold"):
            release.wait(60)
        if job.payload.get("fail"):
            raise RuntimeError("nope")
        return None

    for i in range(20):
        client.enqueue(queue_name="work", payload={"i": i, "fail": i % 5 == 0}, max_attempts=1)
    held = client.enqueue(queue_name="work", payload={"hold": True}, priority=-1)  # leased last
    worker = Worker(dsn, {"work": handle}, concurrency=2, poll_interval=60.0, metrics_port=0)
    assert worker.metrics_port is None  # not serving before run()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        port = wait_until(lambda: worker.metrics_port, what="the metrics server")
        # While the worker drains: the held job is still running.
        during = wait_until(
            lambda: (
                (s := _scrape(port))
                and s.get(
                    ("openqueue_worker_jobs_processed_total", (("outcome", "succeeded"), ("queue", "work")))
                )
                == 16
                and s
            ),
            what="16 successes scraped while the held job runs",
        )
        assert _value(during, "openqueue_worker_jobs_processed_total", queue="work", outcome="failed") == 4
        assert (
            _value(during, "openqueue_worker_handler_duration_seconds_count", queue="work", outcome="failed")
            == 4
        )
        assert (
            _value(
                during,
                "openqueue_worker_handler_duration_seconds_bucket",
                queue="work",
                outcome="succeeded",
                le="+Inf",
            )
            == 16
        )
        assert client.get_job(held).status == "processing"
        release.set()
        after = wait_until(
            lambda: (
                (s := _scrape(port))
                and s.get(
                    ("openqueue_worker_jobs_processed_total", (("outcome", "succeeded"), ("queue", "work")))
                )
                == 17
                and s
            ),
            what="the held job counted",
        )
        assert (
            _value(after, "openqueue_worker_handler_duration_seconds_sum", queue="work", outcome="succeeded")
            > 0
        )
    finally:
        release.set()
        worker.stop()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    assert worker.metrics_port is None  # the server stops with the worker
    with pytest.raises(OSError):
        _scrape(port)


def test_worker_refuses_a_bad_metrics_port(dsn: str) -> None:
    for bad in (-1, 65536, "9100", 1.5, True):
        with pytest.raises(WorkerError, match="metrics_port"):
            Worker(dsn, {"q": lambda job: None}, metrics_port=bad)  # type: ignore[arg-type]


def test_worker_says_when_its_metrics_port_is_taken(dsn: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(dsn, {"q": lambda job: None}, metrics_port=port, poll_interval=60.0)
        with pytest.raises(WorkerError, match=f"metrics_port {port}: cannot listen"):
            worker.run()
