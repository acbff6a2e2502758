"""oq_ack_many (CONTRACT.md section 3, v2): element i acked exactly as oq_ack would."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from . import helpers
from .helpers import (
    ack,
    ack_many,
    cancel,
    enqueue_batch,
    expire_lease,
    heartbeat,
    job,
    lease,
    lease_one,
    nack,
    reap,
    snapshot,
)

module_database = helpers.module_database
dsn = helpers.fresh_dsn


@pytest.fixture
def held(conn) -> list[dict]:
    """Four processing jobs in queue 'q', in lease order."""
    enqueue_batch(conn, "q", [{"n": n} for n in range(4)])
    rows = lease(conn, "q", batch_size=4)
    assert len(rows) == 4
    return rows


def _ids_tokens(rows):
    return [r["id"] for r in rows], [r["lease_token"] for r in rows]


def test_ack_many_completes_every_held_job_and_returns_their_ids_in_input_order(conn, held):
    ids, tokens = _ids_tokens(held)
    ids.reverse()
    tokens.reverse()
    assert ack_many(conn, ids, tokens) == ids
    for job_id in ids:
        row = job(conn, job_id)
        assert row["status"] == "completed"
        assert row["result"] is None  # results NULL: none stored
        assert row["finished_at"] is not None
        assert row["lease_expires_at"] is None


def test_ack_many_stores_each_result_like_oq_ack(conn, held):
    ids, tokens = _ids_tokens(held)
    results = [{"i": 0}, None, [1, 2], "text"]
    assert ack_many(conn, ids, tokens, results=results) == ids
    assert [job(conn, i)["result"] for i in ids] == results


def test_ack_many_matches_oq_ack_row_for_row(conn):
    """The same jobs acked one by one and in one batch end up identical (but for ids and times)."""
    enqueue_batch(conn, "one", [{"n": n} for n in range(3)])
    enqueue_batch(conn, "many", [{"n": n} for n in range(3)])
    singles = lease(conn, "one", batch_size=3)
    batch = lease(conn, "many", batch_size=3)
    for r in singles:
        assert ack(conn, r["id"], r["lease_token"], result={"n": 1}) is True
    ids, tokens = _ids_tokens(batch)
    assert ack_many(conn, ids, tokens, results=[{"n": 1}] * 3) == ids
    skip = {"id", "queue_name", "finished_at", "created_at", "run_at"}
    for a, b in zip(singles, batch, strict=True):
        ja, jb = job(conn, a["id"]), job(conn, b["id"])
        assert {k: v for k, v in ja.items() if k not in skip} == {
            k: v for k, v in jb.items() if k not in skip
        }


def test_stale_and_wrong_tokens_are_simply_absent(conn, held):
    a, b, c, d = held
    # b: reaped and re-leased (its old token is stale); c: a random token; d: cancelled.
    expire_lease(conn, b["id"])
    assert reap(conn) == 1
    again = lease_one(conn, "q")
    assert again["id"] == b["id"]
    assert cancel(conn, d["id"]) is True
    done = ack_many(
        conn,
        [a["id"], b["id"], c["id"], d["id"], 999_999],
        [a["lease_token"], b["lease_token"], uuid.uuid4(), d["lease_token"], uuid.uuid4()],
    )
    assert done == [a["id"]]
    assert job(conn, a["id"])["status"] == "completed"
    assert job(conn, b["id"])["status"] == "processing"
    assert heartbeat(conn, b["id"], again["lease_token"]) is not None  # the new lease still holds
    assert job(conn, c["id"])["status"] == "processing"
    assert job(conn, d["id"])["status"] == "cancelled"


def test_a_token_already_used_acks_nothing_the_second_time(conn, held):
    ids, tokens = _ids_tokens(held)
    assert ack_many(conn, ids[:2], tokens[:2]) == ids[:2]
    before = snapshot(conn)
    assert ack_many(conn, ids[:2], tokens[:2]) == []
    assert ack(conn, ids[0], tokens[0]) is False
    assert snapshot(conn) == before


def test_expired_but_unreaped_lease_still_acks(conn, held):
    expire_lease(conn, held[0]["id"])
    assert ack_many(conn, [held[0]["id"]], [held[0]["lease_token"]]) == [held[0]["id"]]


def test_nacked_job_is_not_completed(conn, held):
    a = held[0]
    assert nack(conn, a["id"], a["lease_token"], error="x") == "failed"
    assert ack_many(conn, [a["id"]], [a["lease_token"]]) == []
    assert job(conn, a["id"])["status"] == "failed"


def test_duplicate_ids_are_acked_once_with_the_first_result(conn, held):
    a, b = held[0], held[1]
    done = ack_many(
        conn,
        [a["id"], a["id"], b["id"], a["id"]],
        [a["lease_token"], a["lease_token"], uuid.uuid4(), uuid.uuid4()],
        results=[{"first": True}, {"second": True}, None, {"wrong": True}],
    )
    assert done == [a["id"]]
    assert job(conn, a["id"])["result"] == {"first": True}
    assert job(conn, b["id"])["status"] == "processing"
    assert conn.execute("select count(*) from openqueue.jobs where id = %s", [a["id"]]).fetchone() == (1,)


def test_empty_arrays_return_nothing_and_write_nothing(conn, held):
    before = snapshot(conn)
    assert ack_many(conn, [], []) == []
    assert ack_many(conn, [], [], results=[]) == []
    assert snapshot(conn) == before


def test_positional_call_and_default_results(conn, held):
    ids, tokens = _ids_tokens(held)
    rows = conn.execute("select * from openqueue.oq_ack_many(%s::bigint[], %s::uuid[])", [ids, tokens])
    assert [r[0] for r in rows] == ids


def test_ack_many_inside_a_rolled_back_transaction_changes_nothing(conn, held):
    ids, tokens = _ids_tokens(held)
    before = snapshot(conn)
    with pytest.raises(RuntimeError), conn.transaction():
        assert ack_many(conn, ids, tokens) == ids
        raise RuntimeError("roll back")
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("args", "sqlstate", "argument"),
    [
        ({"job_ids": None, "lease_tokens": []}, "22004", "job_ids"),
        ({"job_ids": [], "lease_tokens": None}, "22004", "lease_tokens"),
        ({"job_ids": [1, 2], "lease_tokens": [uuid.uuid4()]}, "22023", "lease_tokens"),
        ({"job_ids": [1], "lease_tokens": [uuid.uuid4(), uuid.uuid4()]}, "22023", "lease_tokens"),
        ({"job_ids": [1], "lease_tokens": [uuid.uuid4()], "results": [None, None]}, "22023", "results"),
        ({"job_ids": [1], "lease_tokens": [uuid.uuid4()], "results": []}, "22023", "results"),
        ({"job_ids": [None], "lease_tokens": [uuid.uuid4()]}, "22004", "job_ids"),
        ({"job_ids": [1], "lease_tokens": [None]}, "22004", "lease_tokens"),
    ],
)
def test_bad_arrays_are_rejected_and_nothing_is_written(conn, held, args, sqlstate, argument):
    # Valid pairs first: a rejected call must not ack them either.
    ids, tokens = _ids_tokens(held)
    if args["job_ids"] is not None and args["lease_tokens"] is not None:
        args = {**args}
        extra = len(ids)
        args["job_ids"] = ids + args["job_ids"]
        args["lease_tokens"] = tokens + args["lease_tokens"]
        if "results" in args:
            args["results"] = [None] * extra + args["results"]
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as excinfo:
        helpers.call(conn, "oq_ack_many", **args).fetchall()
    assert excinfo.value.sqlstate == sqlstate, excinfo.value
    assert argument in excinfo.value.diag.message_primary
    assert snapshot(conn) == before
