"""Every page and endpoint of the dashboard over HTTP, against a real database."""

from __future__ import annotations

import re

import psycopg
from starlette.testclient import TestClient

from openqueue_py import Client

from .conftest import complete, make_dead


def _row(html: str, queue: str) -> str:
    match = re.search(rf'<tr data-queue="{re.escape(queue)}">(.*?)</tr>', html, re.S)
    assert match, f"no row for queue {queue!r}"
    return match.group(1)


def _count(row: str, state: str) -> int:
    match = re.search(rf'data-state="{state}">\s*(?:<a [^>]*>)?([\d,]+)', row)
    assert match, f"no {state} cell in {row!r}"
    return int(match.group(1).replace(",", ""))


def test_overview_lists_every_queue_with_counts_by_state_and_oldest_due_age(
    dash: TestClient, client: Client, conn: psycopg.Connection
) -> None:
    for _ in range(3):
        client.enqueue(queue_name="emails", payload={})
    complete(client, "reports")
    make_dead(client, "reports", ["boom"])
    conn.execute(
        "update openqueue.jobs set run_at = now() - interval '5 minutes' where queue_name = 'emails'"
    )

    response = dash.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    emails, reports = _row(response.text, "emails"), _row(response.text, "reports")
    assert _count(emails, "pending") == 3
    assert _count(emails, "completed") == 0
    assert _count(reports, "completed") == 1
    assert _count(reports, "dead") == 1
    assert re.search(r"data-oldest-due>5 min( \d+ s)?<", emails), emails
    assert re.search(r"data-oldest-due>—<", reports), reports
    assert '<div class="value" data-total="pending">3</div>' in response.text
    # The counts refresh themselves.
    assert 'hx-get="/partials/queues" hx-trigger="every 2s"' in response.text
    assert '<script src="/static/htmx.min.js"' in response.text


def test_queue_partial_shows_a_new_enqueue(dash: TestClient, client: Client) -> None:
    client.enqueue(queue_name="emails", payload={})
    before = dash.get("/partials/queues")
    assert before.status_code == 200
    assert _count(_row(before.text, "emails"), "pending") == 1
    assert "<html" not in before.text  # a fragment, swapped in by htmx
    client.enqueue(queue_name="emails", payload={})
    after = dash.get("/partials/queues")
    assert _count(_row(after.text, "emails"), "pending") == 2


def test_overview_with_no_queue_says_so(dash: TestClient) -> None:
    response = dash.get("/")
    assert response.status_code == 200
    assert "No queue yet" in response.text


def test_throughput_chart_counts_completions_and_failures_of_the_last_hour(
    dash: TestClient, client: Client, conn: psycopg.Connection
) -> None:
    for _ in range(3):
        complete(client, "q")
    make_dead(client, "q", ["first", "second"])
    # Finished two hours ago: outside the chart.
    old = complete(client, "q")
    conn.execute("update openqueue.jobs set finished_at = now() - interval '2 hours' where id = %s", (old,))

    response = dash.get("/partials/throughput")
    assert response.status_code == 200
    assert "<svg" in response.text
    assert 'aria-label="Last 60 minutes: 3 jobs completed, 2 attempts failed"' in response.text
    assert len(re.findall(r'class="bar-done"', response.text)) >= 1
    assert len(re.findall(r'class="bar-failed"', response.text)) >= 1
    page = dash.get("/")
    assert "3 completed · 2 failed attempts" in page.text


def test_dead_list_shows_each_dead_job_with_its_error_history(dash: TestClient, client: Client) -> None:
    dead = make_dead(client, "billing", ["card declined", "Traceback (most recent call last):\n  boom"])
    other = make_dead(client, "emails", ["smtp down"])
    complete(client, "billing")

    response = dash.get("/dead")
    assert response.status_code == 200
    assert f'data-job="{dead}"' in response.text and f'data-job="{other}"' in response.text
    assert "2 dead jobs" in response.text
    assert "card declined" in response.text
    assert "Traceback (most recent call last):\n  boom" in response.text
    assert "attempt 1" in response.text and "attempt 2" in response.text
    # Read-only: no button.
    assert "/replay" not in response.text

    only_billing = dash.get("/dead", params={"queue": "billing"})
    assert f'data-job="{dead}"' in only_billing.text
    assert f'data-job="{other}"' not in only_billing.text
    assert "1 dead job" in only_billing.text


def test_dead_list_of_a_bad_queue_name_is_404(dash: TestClient) -> None:
    assert dash.get("/dead", params={"queue": "no spaces allowed"}).status_code == 404


def test_job_page_shows_payload_result_errors_and_timestamps(dash: TestClient, client: Client) -> None:
    done = complete(client, "q", result={"sent": 42}, payload={"to": "ada@example.com"})
    response = dash.get(f"/jobs/{done}")
    assert response.status_code == 200
    text = response.text
    assert "ada@example.com" in text
    assert "&#34;sent&#34;: 42" in text or '"sent": 42' in text
    assert '<span class="badge completed" data-status>completed</span>' in text
    assert text.count(" UTC<") >= 3  # created, run at, finished

    dead = make_dead(client, "q", ["first failure", "second failure"])
    text = dash.get(f"/jobs/{dead}").text
    assert "first failure" in text and "second failure" in text
    assert "2 failed attempts" in text
    assert "no result stored" in text


def test_job_page_never_shows_the_lease_token(dash: TestClient, client: Client) -> None:
    job_id = client.enqueue(queue_name="q", payload={})
    leased = client.lease(queue_name="q", worker_id="w-1")
    assert leased is not None
    text = dash.get(f"/jobs/{job_id}").text
    assert "processing" in text and "w-1" in text
    assert str(leased.lease_token) not in text
    assert str(leased.lease_token) not in dash.get("/queues/q").text


def test_unknown_and_bad_job_ids_are_404(dash: TestClient) -> None:
    assert dash.get("/jobs/987654").status_code == 404
    assert "no job 987654" in dash.get("/jobs/987654").text
    assert dash.get("/jobs/abc").status_code == 404
    assert dash.get("/jobs/-1").status_code == 404
    assert dash.get(f"/jobs/{2**64}").status_code == 404


def test_queue_page_lists_its_newest_jobs_and_filters_by_state(dash: TestClient, client: Client) -> None:
    done = complete(client, "q")
    pending = client.enqueue(queue_name="q", payload={})
    response = dash.get("/queues/q")
    assert response.status_code == 200
    assert f'data-job="{pending}"' in response.text and f'data-job="{done}"' in response.text
    completed_only = dash.get("/queues/q", params={"state": "completed"})
    assert f'data-job="{done}"' in completed_only.text
    assert f'data-job="{pending}"' not in completed_only.text
    assert dash.get("/queues/q", params={"state": "bogus"}).status_code == 404
    assert dash.get("/queues/nope").status_code == 404
    assert dash.get("/queues/bad%20name").status_code == 404


def test_actions_are_refused_with_403_and_hidden_when_disabled(dash: TestClient, client: Client) -> None:
    dead = make_dead(client, "q", ["boom"])
    pending = client.enqueue(queue_name="q", payload={})
    assert "Replay</button>" not in dash.get(f"/jobs/{dead}").text
    assert "Cancel</button>" not in dash.get(f"/jobs/{pending}").text
    assert "read-only" in dash.get("/").text

    replay = dash.post(f"/jobs/{dead}/replay", follow_redirects=False)
    assert replay.status_code == 403
    assert "--allow-actions" in replay.text
    assert dash.post(f"/jobs/{pending}/cancel", follow_redirects=False).status_code == 403
    assert client.get_job(dead).status == "dead"
    assert client.get_job(pending).status == "pending"


def test_replay_and_cancel_with_actions_enabled(dash_rw: TestClient, client: Client) -> None:
    dead = make_dead(client, "q", ["boom"])
    pending = client.enqueue(queue_name="q", payload={})
    assert "Replay</button>" in dash_rw.get(f"/jobs/{dead}").text
    assert "Replay</button>" in dash_rw.get("/dead").text
    assert "Cancel</button>" in dash_rw.get(f"/jobs/{pending}").text

    replay = dash_rw.post(f"/jobs/{dead}/replay", follow_redirects=False)
    assert replay.status_code == 303
    assert replay.headers["location"] == f"/jobs/{dead}?done=replayed"
    job = client.get_job(dead)
    assert job.status == "pending"
    assert [e["error"] for e in job.errors] == ["boom"]  # the history is kept
    assert f"Job {dead} replayed." in dash_rw.get(replay.headers["location"]).text

    cancel = dash_rw.post(f"/jobs/{pending}/cancel", follow_redirects=True)
    assert cancel.status_code == 200
    assert client.get_job(pending).status == "cancelled"
    assert f"Job {pending} cancelled." in cancel.text


def test_actions_on_a_job_in_the_wrong_state_are_409_and_change_nothing(
    dash_rw: TestClient, client: Client
) -> None:
    done = complete(client, "q")
    response = dash_rw.post(f"/jobs/{done}/replay", follow_redirects=False)
    assert response.status_code == 409
    assert "is completed" in response.text
    assert dash_rw.post(f"/jobs/{done}/cancel", follow_redirects=False).status_code == 409
    assert client.get_job(done).status == "completed"


def test_actions_on_unknown_or_bad_ids_are_404(dash_rw: TestClient) -> None:
    assert dash_rw.post("/jobs/424242/replay").status_code == 404
    assert dash_rw.post("/jobs/424242/cancel").status_code == 404
    assert dash_rw.post("/jobs/xyz/replay").status_code == 404
    assert dash_rw.post(f"/jobs/{2**63}/cancel").status_code == 404


def test_actions_are_get_proof_and_refuse_cross_site_posts(dash_rw: TestClient, client: Client) -> None:
    dead = make_dead(client, "q", ["boom"])
    assert dash_rw.get(f"/jobs/{dead}/replay").status_code == 405
    evil = dash_rw.post(
        f"/jobs/{dead}/replay", headers={"Origin": "https://evil.example"}, follow_redirects=False
    )
    assert evil.status_code == 403
    cross = dash_rw.post(f"/jobs/{dead}/replay", headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert client.get_job(dead).status == "dead"
    same = dash_rw.post(
        f"/jobs/{dead}/replay", headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert same.status_code == 303
    assert client.get_job(dead).status == "pending"


def test_static_htmx_is_served_with_its_license(dash: TestClient) -> None:
    response = dash.get("/static/htmx.min.js")
    assert response.status_code == 200
    assert "Zero-Clause BSD" in response.text[:600]
    assert "htmx" in response.text
    assert dash.get("/static/style.css").status_code == 200


def test_pages_may_not_be_framed(dash: TestClient) -> None:
    assert dash.get("/").headers["x-frame-options"] == "DENY"
