"""The dashboard end to end in a real headless Chromium (the system's, driven by Playwright).

Each test starts the dashboard with uvicorn on a free port of 127.0.0.1 over
its own database, and saves screenshots to tests/dashboard/artifacts/ (git
ignores it; the paths are printed). Without a Chromium, or without
Playwright, the tests skip saying so, unless OPENQUEUE_REQUIRE_BROWSER is
set (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from openqueue_py import Client
from openqueue_py.dashboard import create_app

from .conftest import complete, make_dead

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# How long the page may take to show a change (the counts refresh every 2 s).
SETTLE_MS = 30_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("OPENQUEUE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("OPENQUEUE_REQUIRE_BROWSER"):
        pytest.fail(f"OPENQUEUE_REQUIRE_BROWSER is set, but {reason}")
    print(f"\nSKIP browser tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set OPENQUEUE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class Dashboard:
    """uvicorn serving the dashboard on 127.0.0.1 in a thread."""

    def __init__(self, dsn: str, allow_actions: bool) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            create_app(dsn, allow_actions=allow_actions),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Dashboard:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the dashboard did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1320, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(SETTLE_MS)
    yield page
    context.close()


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


def _history(client: Client, queue: str, count: int) -> None:
    """``count`` jobs completed, their finish times spread over the last hour (for the chart)."""
    client.enqueue_batch(queue, [{"n": i} for i in range(count)])
    leased = client.lease_many(queue_name=queue, worker_id="seed", batch_size=count)
    assert len(leased) == count
    client.ack_many([job.job.id for job in leased], [job.lease_token for job in leased])
    with client.connection() as conn:
        conn.execute(
            "update openqueue.jobs set finished_at = now() - mod(id, 59) * interval '1 minute' "
            "- mod(id, 7) * interval '3 seconds' where queue_name = %s and status = 'completed' "
            "and mod(id, 3) <> 0",
            (queue,),
        )


def _seed(client: Client) -> dict[str, int]:
    """A few queues in the states an operator sees."""
    _history(client, "reports", 240)
    for i in range(6):
        complete(client, "emails", result={"sent": i}, payload={"to": f"user{i}@example.com"})
    for i in range(4):
        client.enqueue(queue_name="emails", payload={"to": f"later{i}@example.com"})
    for i in range(3):
        complete(client, "reports", payload={"report": i})
    dead = make_dead(
        client,
        "billing",
        [
            "CardDeclined: insufficient funds",
            'Traceback (most recent call last):\n  File "billing.py", line 12, in charge\n'
            "    gateway.charge(amount)\nTimeoutError: payment gateway did not answer in 10 s",
        ],
        payload={"invoice": 1042, "amount_cents": 12900},
    )
    make_dead(client, "billing", ["CardDeclined: expired card"], payload={"invoice": 1043})
    client.enqueue(queue_name="thumbnails", payload={"image": "a.png"}, priority=5)
    return {"dead": dead}


def _cell(page: Any, queue: str, state: str) -> Any:
    return page.locator(f'tr[data-queue="{queue}"] td[data-state="{state}"]')


def test_counts_change_on_the_page_after_an_enqueue(dsn: str, client: Client, page: Any) -> None:
    from playwright.sync_api import expect

    _seed(client)
    with Dashboard(dsn, allow_actions=False) as dash:
        page.goto(dash.url + "/")
        expect(page.locator("h1")).to_have_text("Queues")
        expect(_cell(page, "emails", "pending")).to_have_text("4")
        expect(page.locator(".chart")).to_be_visible()
        expect(page.locator("#throughput")).to_contain_text("249 completed")
        _shot(page, "overview")

        for i in range(3):
            client.enqueue(queue_name="emails", payload={"to": f"new{i}@example.com"})
        client.enqueue(queue_name="new_queue", payload={})
        # No reload: htmx refreshes the counts.
        expect(_cell(page, "emails", "pending")).to_have_text("7")
        expect(_cell(page, "new_queue", "pending")).to_have_text("1")
        expect(page.locator('[data-total="pending"]')).to_have_text("9")
        _shot(page, "overview-after-enqueue")

        # Read-only: no button anywhere, and the header says so.
        page.goto(dash.url + "/dead")
        expect(page.locator("tr[data-job]")).to_have_count(2)
        assert page.locator("button").count() == 0
        expect(page.locator(".mode")).to_have_text("read-only")


def test_replay_a_dead_job_from_the_dead_letter_list(dsn: str, client: Client, page: Any) -> None:
    from playwright.sync_api import expect

    seeded = _seed(client)
    dead = seeded["dead"]
    with Dashboard(dsn, allow_actions=True) as dash:
        page.goto(dash.url + "/dead")
        row = page.locator(f'tr[data-job="{dead}"]')
        expect(row).to_contain_text("TimeoutError: payment gateway did not answer")
        row.locator("summary").click()
        expect(row.locator(".errors li")).to_have_count(2)
        expect(row.locator(".errors")).to_contain_text("CardDeclined: insufficient funds")
        _shot(page, "dead-letters")

        row.get_by_role("button", name="Replay").click()
        page.wait_for_url(f"**/jobs/{dead}?done=replayed")
        expect(page.locator(".notice")).to_have_text(f"Job {dead} replayed.")
        expect(page.locator("[data-status]")).to_have_text("pending")
        expect(page.locator("[data-payload]")).to_contain_text('"invoice": 1042')
        _shot(page, "job-replayed")
        job = client.get_job(dead)
        assert job is not None and job.status == "pending"
        assert len(job.errors) == 2  # the history is kept

        page.goto(dash.url + "/dead")
        expect(page.locator("tr[data-job]")).to_have_count(1)
        page.goto(dash.url + "/")
        expect(_cell(page, "billing", "dead")).to_have_text("1")
        expect(_cell(page, "billing", "pending")).to_have_text("1")

        # The queue's own page, from its link.
        page.locator('tr[data-queue="emails"] a').first.click()
        page.wait_for_url("**/queues/emails")
        expect(page.locator("tr[data-job]")).to_have_count(10)
        _shot(page, "queue")
