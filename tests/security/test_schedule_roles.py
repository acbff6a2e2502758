"""CONTRACT section 7 roles: openqueue_worker may execute oq_tick and
oq_cron_next; openqueue_admin all of section 7 and SELECT on
openqueue.schedules; openqueue_producer none of it (42501).

Every check runs as a real LOGIN role holding exactly one OpenQueue role.
"""

from __future__ import annotations

import threading
import time

import pytest

from openqueue_py import Worker

from .test_roles import sqlstate_of

SCHEDULE = "select openqueue.oq_schedule('nightly', '0 2 * * *', 'reports', timezone => 'Europe/Berlin')"
UNSCHEDULE = "select openqueue.oq_unschedule('nightly')"
TICK = "select openqueue.oq_tick()"
CRON_NEXT = "select openqueue.oq_cron_next('*/5 * * * *', now(), 'Europe/Berlin')"
READ_VIEW = "select * from openqueue.schedules"

EXPECTED = {
    # statement: the roles that may run it
    SCHEDULE: {"openqueue_admin"},
    UNSCHEDULE: {"openqueue_admin"},
    TICK: {"openqueue_admin", "openqueue_worker"},
    CRON_NEXT: {"openqueue_admin", "openqueue_worker"},
    READ_VIEW: {"openqueue_admin"},
}


@pytest.mark.parametrize("label", ["producer", "worker", "admin", "nobody"])
def test_each_role_may_do_exactly_its_part_of_section_7(conn, logins, label):
    conn.execute(SCHEDULE)  # as the owner: something to unschedule and read
    login = logins[label]
    with login.connect() as own:
        for sql, roles in EXPECTED.items():
            state = sqlstate_of(own, sql)
            if login.member_of in roles:
                assert state is None, (label, sql, state)
            else:
                assert state == "42501", (label, sql, state)


@pytest.mark.parametrize("label", ["producer", "worker", "admin", "nobody"])
def test_no_role_touches_the_schedules_table_or_writes_the_view(conn, logins, label, pg_server):
    conn.execute(SCHEDULE)
    with logins[label].connect() as own:
        for sql in (
            "select * from openqueue.cron_schedules",
            "update openqueue.cron_schedules set next_run_at = now()",
            "delete from openqueue.cron_schedules",
            "update openqueue.schedules set cron = '* * * * *'",
            "delete from openqueue.schedules",
            "insert into openqueue.schedules (schedule_name) values ('x')",
        ):
            refused = {"42501"}
            if pg_server.kind == "citus" and "openqueue.schedules" in sql and not sql.startswith("select"):
                # On Citus the view reads openqueue._schedules_rows() (oq_distribute), so it is not
                # updatable at all, for its owner too: PostgreSQL refuses the write with 55000
                # ("not automatically updatable") before it checks privileges.
                refused.add("55000")
            assert sqlstate_of(own, sql) in refused, (label, sql)
    assert conn.execute("select cron from openqueue.schedules").fetchall() == [("0 2 * * *",)]


def test_admin_manages_and_reads_schedules(conn, logins):
    with logins["admin"].connect() as own:
        own.execute(SCHEDULE)
        rows = own.execute(
            "select schedule_name, cron, queue_name, timezone from openqueue.schedules"
        ).fetchall()
        assert rows == [("nightly", "0 2 * * *", "reports", "Europe/Berlin")]
        assert own.execute(UNSCHEDULE).fetchone() == (True,)
        assert own.execute(READ_VIEW).fetchall() == []


def test_a_worker_login_ticks_a_due_schedule_into_a_job(conn, logins):
    conn.execute("select openqueue.oq_schedule('s', '* * * * *', 'ticked', '{\"k\": 1}')")
    conn.execute("update openqueue.cron_schedules set next_run_at = now() - interval '2 minutes'")
    with logins["worker"].connect() as own:
        assert own.execute(TICK).fetchone() == (1,)
        leased = own.execute("select payload from openqueue.oq_lease('ticked', 'w1')").fetchall()
    assert leased == [({"k": 1},)]


def test_the_worker_runtime_fires_schedules_as_a_worker_login(conn, logins):
    conn.execute("select openqueue.oq_schedule('s', '* * * * *', 'ticked')")
    conn.execute("update openqueue.cron_schedules set next_run_at = now() - interval '2 minutes'")
    done: list[int] = []
    worker = Worker(
        logins["worker"].dsn,
        {"ticked": lambda job: done.append(job.id)},
        poll_interval=0.5,
        tick_interval=0.05,
        handle_signals=False,
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not done and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert len(done) == 1
    row = conn.execute("select status, idempotency_key from openqueue.jobs").fetchone()
    assert row[0] == "completed" and row[1].startswith("schedule:s:")
    assert conn.execute("select last_run_at is not null from openqueue.schedules").fetchone() == (True,)
