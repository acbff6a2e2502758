"""Roles and flow control (CONTRACT.md sections 6 and 8).

openqueue_admin may execute section 8; producers and workers may not; and the
limits hold for every caller of oq_lease, whatever its role.
"""

from __future__ import annotations

import psycopg
import pytest

SECTION_8 = {
    "pause": "select openqueue.oq_pause_queue(queue_name => 'q')",
    "resume": "select openqueue.oq_resume_queue(queue_name => 'q')",
    "limits": "select openqueue.oq_set_queue_limits(queue_name => 'q', max_running => 1)",
}


def _sqlstate(conn: psycopg.Connection, sql: str) -> str | None:
    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


@pytest.mark.parametrize("call", sorted(SECTION_8))
def test_admin_may_execute_section_8_and_no_other_role_may(logins, call):
    with logins["admin"].connect() as admin:
        assert _sqlstate(admin, SECTION_8[call]) is None
    for label in ("producer", "worker", "nobody"):
        with logins[label].connect() as other:
            assert _sqlstate(other, SECTION_8[call]) == "42501", label


def test_limits_and_pause_hold_for_a_worker_login(conn, logins):
    with logins["admin"].connect() as admin:
        admin.execute("select openqueue.oq_set_queue_limits(queue_name => 'q', max_running => 2)")
    conn.execute("select openqueue.oq_enqueue_batch('q', '[1, 2, 3, 4, 5]')")
    lease = "select count(*) from openqueue.oq_lease(queue_name => 'q', worker_id => %s, batch_size => 5)"
    with logins["worker"].connect() as worker, logins["worker2"].connect() as worker2:
        assert worker.execute(lease, ["w1"]).fetchone()[0] == 2
        assert worker2.execute(lease, ["w2"]).fetchone()[0] == 0
        with logins["admin"].connect() as admin:
            admin.execute("select openqueue.oq_set_queue_limits(queue_name => 'q')")
            admin.execute("select openqueue.oq_pause_queue(queue_name => 'q')")
        assert worker2.execute(lease, ["w2"]).fetchone()[0] == 0
        # The worker role reads paused in oq_stats, and may not touch the flow tables.
        (paused,) = worker.execute(
            "select paused from openqueue.oq_stats() where queue_name = 'q'"
        ).fetchone()
        assert paused is True
        assert _sqlstate(worker, "select * from openqueue.queue_flow") == "42501"
        assert _sqlstate(worker, "update openqueue.queues set paused = false") == "42501"
        with logins["admin"].connect() as admin:
            admin.execute("select openqueue.oq_resume_queue(queue_name => 'q')")
        assert worker2.execute(lease, ["w2"]).fetchone()[0] == 3


def test_the_internal_flow_helpers_are_the_owners_only(logins):
    for label in ("producer", "worker", "admin"):
        with logins[label].connect() as other:
            for helper in (
                "select openqueue._flow_control_used()",
                "select openqueue._flow_control_enable()",
                "select openqueue._flow_admit('q', 1)",
            ):
                assert _sqlstate(other, helper) == "42501", (label, helper)
