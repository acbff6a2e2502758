"""The SQL API from the real psql binary, as an operator or another language would call it."""

from __future__ import annotations

from . import helpers
from .helpers import job, job_count

module_database = helpers.module_database
dsn = helpers.fresh_dsn


def test_enqueue_lease_ack_and_stats_from_psql(conn, psql):
    enqueued = psql("select openqueue.oq_enqueue(queue_name => 'emails', payload => '{}')")
    job_id = int(enqueued.stdout.strip())
    assert job(conn, job_id)["status"] == "pending"
    assert job(conn, job_id)["payload"] == {}

    leased = psql(
        "select id, lease_token, attempts"
        " from openqueue.oq_lease(queue_name => 'emails', worker_id => 'psql-worker')"
    )
    leased_id, token, attempts = leased.stdout.strip().split("|")
    assert (int(leased_id), int(attempts)) == (job_id, 1)
    assert job(conn, job_id)["leased_by"] == "psql-worker"

    acked = psql(
        f"select openqueue.oq_ack(job_id => {job_id}, lease_token => '{token}', result => '{{\"ok\": true}}')"
    )
    assert acked.stdout.strip() == "t"
    assert job(conn, job_id)["result"] == {"ok": True}

    stats = psql("select * from openqueue.oq_stats()")
    # queue|pending|processing|failed|completed|dead|cancelled|oldest_due_at (NULL prints empty)|paused
    assert stats.stdout.strip() == "emails|0|0|0|1|0|0||f"


def test_positional_calls_from_psql(conn, psql):
    out = psql("select openqueue.oq_enqueue('emails', '{\"to\": \"x\"}', 3)").stdout.strip()
    assert job(conn, int(out))["priority"] == 3
    assert psql("select count(*) from openqueue.oq_lease('emails', 'w', 10, 5)").stdout.strip() == "1"


def test_bad_call_exits_nonzero_with_the_sqlstate_and_message_on_stderr(conn, psql):
    bad = psql(
        "select openqueue.oq_enqueue(queue_name => 'a b', payload => '{}')",
        "-v",
        "VERBOSITY=verbose",
        check=False,
    )
    assert bad.returncode != 0
    assert bad.stdout == ""
    assert "ERROR:  22023:" in bad.stderr
    assert "queue_name" in bad.stderr
    assert job_count(conn) == 0


def test_bad_call_with_default_verbosity_names_the_argument(conn, psql):
    bad = psql("select * from openqueue.oq_lease(queue_name => 'q', worker_id => NULL)", check=False)
    assert bad.returncode != 0
    assert bad.stderr.startswith("ERROR:  ")
    assert "worker_id" in bad.stderr
