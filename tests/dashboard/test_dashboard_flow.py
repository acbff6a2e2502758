"""The dashboard and sections 7-8: schedules, paused and limited queues, pause and resume buttons."""

from __future__ import annotations

import re
from datetime import timedelta

from starlette.testclient import TestClient

from openqueue_py import Client
from openqueue_py.dashboard.app import _ts


def _row(html: str, queue: str) -> str:
    match = re.search(rf'<tr data-queue="{re.escape(queue)}">(.*?)</tr>', html, re.S)
    assert match, f"no row for {queue}"
    return match.group(1)


def test_schedules_page_lists_name_cron_timezone_queue_next_and_last_run(
    dash: TestClient, client: Client
) -> None:
    client.schedule("nightly", "0 2 * * *", "reports", timezone="Europe/Berlin")
    client.schedule("often", "*/5 * * * *", "q")
    (nightly, often) = client.list_schedules()
    assert client.tick(often.next_run_at) == 1  # "often" has a last run now
    page = dash.get("/schedules")
    assert page.status_code == 200
    html = page.text
    assert "2 schedules" in html
    assert html.index('data-schedule="nightly"') < html.index('data-schedule="often"')
    row = re.search(r'<tr data-schedule="nightly">(.*?)</tr>', html, re.S).group(1)
    assert "0 2 * * *" in row and "Europe/Berlin" in row and 'href="/queues/reports"' in row
    assert _ts(nightly.next_run_at) in row
    assert "never" in row
    often_row = re.search(r'<tr data-schedule="often">(.*?)</tr>', html, re.S).group(1)
    assert _ts(often.next_run_at) in often_row  # the last run is the slot that fired
    assert "never" not in often_row
    assert 'href="/schedules"' in dash.get("/").text  # in the navigation


def test_schedules_page_without_schedules_says_so(dash: TestClient) -> None:
    page = dash.get("/schedules")
    assert page.status_code == 200 and "No schedule yet" in page.text


def test_paused_and_limited_queues_are_marked(dash: TestClient, client: Client) -> None:
    client.enqueue("free", {})
    client.enqueue("held", {})
    client.pause_queue("held")
    client.set_queue_limits("slow", 5, 100, timedelta(minutes=1))
    client.set_queue_limits("fast", None, 5)
    html = dash.get("/partials/queues").text
    assert "data-paused" in _row(html, "held") and "data-paused" not in _row(html, "free")
    slow = _row(html, "slow")
    assert 'data-max-running="5"' in slow and "max 5 running" in slow
    assert 'data-rate="100/1m"' in slow
    fast = _row(html, "fast")
    assert 'data-rate="5/1s"' in fast and "data-max-running" not in fast
    assert "data-max-running" not in _row(html, "free") and "data-rate" not in _row(html, "free")
    queue_page = dash.get("/queues/held").text
    assert "data-paused" in queue_page
    assert 'data-max-running="5"' in dash.get("/queues/slow").text
    # Lifting the limits and resuming clears the marks.
    client.set_queue_limits("slow")
    client.set_queue_limits("fast")
    client.resume_queue("held")
    html = dash.get("/").text
    assert "data-paused" not in html and "data-max-running" not in html and "data-rate" not in html


def test_pause_and_resume_are_refused_with_403_and_hidden_when_disabled(
    dash: TestClient, client: Client
) -> None:
    client.enqueue("q", {})
    assert "data-pause" not in dash.get("/").text and "data-pause" not in dash.get("/queues/q").text
    response = dash.post("/queues/q/pause", follow_redirects=False)
    assert response.status_code == 403 and "--allow-actions" in response.text
    assert [s.paused for s in client.stats()] == [False]
    client.pause_queue("q")
    assert "data-resume" not in dash.get("/").text
    assert dash.post("/queues/q/resume", follow_redirects=False).status_code == 403
    assert [s.paused for s in client.stats()] == [True]


def test_pause_and_resume_with_actions_enabled(dash_rw: TestClient, client: Client) -> None:
    client.enqueue("q", {})
    assert "data-pause" in _row(dash_rw.get("/").text, "q")
    paused = dash_rw.post("/queues/q/pause", follow_redirects=False)
    assert paused.status_code == 303 and paused.headers["location"] == "/queues/q?done=paused"
    assert [s.paused for s in client.stats()] == [True]
    assert client.lease("q", "w") is None
    page = dash_rw.get(paused.headers["location"]).text
    assert "Queue q paused." in page and "data-resume" in page and "data-paused" in page
    assert "data-resume" in _row(dash_rw.get("/").text, "q")

    again = dash_rw.post("/queues/q/pause", follow_redirects=True)
    assert "Queue q was already paused." in again.text

    resumed = dash_rw.post("/queues/q/resume", follow_redirects=True)
    assert resumed.status_code == 200 and "Queue q resumed." in resumed.text
    assert [s.paused for s in client.stats()] == [False]
    assert "Queue q was not paused." in dash_rw.post("/queues/q/resume", follow_redirects=True).text
    assert client.lease("q", "w") is not None


def test_queue_notice_echoes_only_known_outcomes(dash_rw: TestClient, client: Client) -> None:
    client.enqueue("q", {})
    page = dash_rw.get("/queues/q", params={"done": "<b>hacked</b>"}).text
    assert "hacked" not in page and "notice" not in page


def test_pause_and_resume_refuse_cross_site_posts_gets_and_bad_names(
    dash_rw: TestClient, client: Client
) -> None:
    client.enqueue("q", {})
    assert dash_rw.get("/queues/q/pause").status_code == 405
    evil = dash_rw.post("/queues/q/pause", headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert evil.status_code == 403
    assert dash_rw.post("/queues/q/pause", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert [s.paused for s in client.stats()] == [False]
    assert dash_rw.post("/queues/bad%20name/pause").status_code == 404
    same = dash_rw.post("/queues/q/pause", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert same.status_code == 303
    assert [s.paused for s in client.stats()] == [True]
