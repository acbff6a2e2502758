"""The worker runtime's batch statements pass each job's queue name (contract section 10).

``heartbeat_many``, ``ack_many_json`` and ``ack_many_and_lease`` take the
queue name of every job: one statement on one PostgreSQL, with one
``oq_ack_many`` per queue. A wrong queue name acts as a wrong token.
"""

from __future__ import annotations

import psycopg

from openqueue_py import _sql


def run(conn: psycopg.Connection, call: _sql.Call):
    return call.decode(conn.execute(call.query, call.params).fetchall())


def leased(conn: psycopg.Connection, queue: str, count: int):
    run(conn, _sql.enqueue_batch(queue, [{}] * count, 0, None, None))
    return [leased for leased, _ in run(conn, _sql.lease_timed(queue, "w", None, count))]


def test_ack_many_json_acks_jobs_of_several_queues_each_with_its_queue_name(conn):
    jobs = leased(conn, "qa", 2) + leased(conn, "qb", 2)
    ids = [j.job.id for j in jobs]
    tokens = [j.lease_token for j in jobs]
    names = ["qa", "qb", "qb", "qa"]  # jobs 0 (qa) and 2 (qb) named right, 1 and 3 wrong
    acked = run(conn, _sql.ack_many_json(ids, tokens, ['{"n": 1}', None, '"x"', None], names))
    assert sorted(acked) == sorted([ids[0], ids[2]])
    acked = run(conn, _sql.ack_many_json(ids, tokens, None, ["qa", "qa", "qb", "qb"]))
    assert sorted(acked) == sorted([ids[1], ids[3]])
    statuses = dict(conn.execute("select id, status from openqueue.jobs").fetchall())
    assert set(statuses.values()) == {"completed"}
    results = dict(conn.execute("select id, result from openqueue.jobs").fetchall())
    assert (results[ids[0]], results[ids[2]]) == ({"n": 1}, "x")


def test_heartbeat_many_extends_only_leases_named_with_their_queue(conn):
    jobs = leased(conn, "ha", 1) + leased(conn, "hb", 1)
    rows = run(
        conn,
        _sql.heartbeat_many([j.job.id for j in jobs], [j.lease_token for j in jobs], 60, ["ha", "ha"]),
    )
    expiry = {job_id: expires for job_id, expires, _ in rows}
    assert expiry[jobs[0].job.id] is not None
    assert expiry[jobs[1].job.id] is None  # named with another queue: as with a wrong token


def test_ack_many_and_lease_acks_with_the_acked_jobs_queue_not_the_leased_one(conn):
    done = leased(conn, "acked_q", 2)
    run(conn, _sql.enqueue_batch("refill_q", [{}, {}], 0, None, None))
    call = _sql.ack_many_and_lease(
        [j.job.id for j in done],
        [j.lease_token for j in done],
        None,
        "refill_q",
        "w",
        None,
        2,
        ["acked_q", "acked_q"],
    )
    acked, refilled = run(conn, call)
    assert sorted(acked) == sorted(j.job.id for j in done)
    assert len(refilled) == 2 and {leased.job.queue_name for leased, _ in refilled} == {"refill_q"}
