"""Every SQL statement the clients send, and how its rows are decoded.

``Client`` and ``AsyncClient`` share this module: each of their methods builds
a :class:`Call` here and runs it, so the query text, the argument checks and
the row mapping exist once. Functions are called with named arguments, and an
argument left as ``None`` is not sent at all, so the SQL default applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from uuid import UUID

from psycopg.types.json import Jsonb

from .errors import InvalidArgument
from .models import (
    HealthCheck,
    Job,
    JobRecord,
    JobState,
    Leased,
    LeaseHandle,
    QueueSettings,
    QueueStats,
    Schedule,
)

T = TypeVar("T")
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One statement: its text, its parameters and how to decode its rows."""

    query: str
    params: dict[str, Any]
    decode: Callable[[Rows], T]


# Argument name -> SQL type, for the explicit casts that keep function
# resolution unambiguous whatever type psycopg picks for a Python value.
_TYPES = {
    "queue_name": "text",
    "payload": "jsonb",
    "payloads": "jsonb",
    "priority": "integer",
    "run_at": "timestamptz",
    "max_attempts": "integer",
    "idempotency_key": "text",
    "worker_id": "text",
    "lease_seconds": "integer",
    "batch_size": "integer",
    "job_id": "bigint",
    "lease_token": "uuid",
    "result": "jsonb",
    "error": "text",
    "retry_in": "interval",
    "retry": "boolean",
    "backoff_base": "interval",
    "backoff_max": "interval",
    "older_than": "interval",
    "include_dead": "boolean",
    "queue_names": "text[]",
    "max_bytes": "integer",
    "job_ids": "bigint[]",
    "lease_tokens": "uuid[]",
    "results": "jsonb[]",
    "max_rows": "integer",
    "mode": "text",
    "seconds": "integer",
    "attempt": "integer",
    "max_running": "integer",
    "rate_limit": "integer",
    "rate_period": "interval",
}


def _call(
    function: str, args: dict[str, Any], decode: Callable[[Rows], T], *, table: bool = False
) -> Call[T]:
    """``openqueue.<function>(name => value, ...)`` for the arguments that are not None."""
    sent = {name: value for name, value in args.items() if value is not None}
    arguments = ", ".join(f"{name} => %({name})s::{_TYPES[name]}" for name in sent)
    select = "select * from" if table else "select"
    return Call(f"{select} openqueue.{function}({arguments})", sent, decode)


# -- argument checks Python can make before any SQL runs ----------------------
# Bounds and formats are the database's to decide; these only catch values
# that cannot be sent at all.


def _json(value: Any, name: str) -> Jsonb | None:
    if value is None:
        return None
    try:
        # NaN and Infinity are not JSON (PostgreSQL refuses them); nesting
        # deeper than Python's recursion limit cannot be serialised at all.
        json.dumps(value, allow_nan=False)
    except RecursionError as exc:
        raise InvalidArgument(f"{name} is nested too deeply to serialise as JSON") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name} is not JSON-serialisable: {exc}") from exc
    return Jsonb(value)


def _text(value: Any, name: str) -> str | None:
    """A str PostgreSQL can hold: text cannot contain NUL, which psycopg refuses with no SQLSTATE."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidArgument(f"{name} must not contain NUL characters")
    return value


def _texts(value: Any, name: str) -> list[str | None] | None:
    """A list of str (None elements are the database's to judge)."""
    items = _list(value, name)
    return None if items is None else [_text(item, f"{name}[]") for item in items]


def _flag(value: Any, name: str) -> bool | None:
    """A bool: anything else (``"false"`` is truthy) would be read silently the wrong way."""
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"{name} must be a bool, got {type(value).__name__}")


def _interval(value: Any, name: str) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    raise InvalidArgument(f"{name} must be a datetime.timedelta, got {type(value).__name__}")


def _timestamp(value: Any, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{name} must be a datetime.datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise InvalidArgument(f"{name} must be timezone-aware (a naive datetime is ambiguous)")
    return value


def _token(value: Any) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    if not isinstance(value, str):
        raise InvalidArgument(f"lease_token must be a UUID or a str, got {type(value).__name__}")
    try:
        return UUID(value)
    except ValueError as exc:
        raise InvalidArgument(f"lease_token is not a UUID: {value[:60]!r}") from exc


def _list(value: Any, name: str) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes | dict) or not isinstance(value, Sequence):
        raise InvalidArgument(f"{name} must be a list, got {type(value).__name__}")
    return list(value)


_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {type(value).__name__}")
    if not _BIGINT_MIN <= value <= _BIGINT_MAX:
        # Every integer argument is an integer or a bigint; beyond that the value cannot
        # be sent at all (psycopg cannot even format one of more than 4300 digits in a list).
        raise InvalidArgument(f"{name} is out of range for a bigint (-2**63 to 2**63 - 1)")
    return value


# -- row decoding ---------------------------------------------------------------


def _scalar(rows: Rows) -> Any:
    return rows[0][0] if rows else None


def _column(rows: Rows) -> list[Any]:
    return [row[0] for row in rows]


def _leased(queue_name: str) -> Callable[[Rows], list[Leased]]:
    def decode(rows: Rows) -> list[Leased]:
        return [
            Leased(
                job=Job(
                    id=r[0],
                    queue_name=queue_name,
                    payload=r[1],
                    priority=r[2],
                    attempts=r[3],
                    max_attempts=r[4],
                    run_at=r[5],
                    created_at=r[6],
                    lease=LeaseHandle(r[7]),
                ),
                lease_token=r[7],
                lease_expires_at=r[8],
            )
            for r in rows
        ]

    return decode


def _stats(rows: Rows) -> list[QueueStats]:
    return [QueueStats(*row) for row in rows]


_JOB_COLUMNS = (
    "id, queue_name, payload, status, priority, run_at, attempts, max_attempts, "
    "leased_by, lease_expires_at, result, errors, idempotency_key, created_at, finished_at"
)


def _job_record(rows: Rows) -> JobRecord | None:
    if not rows:
        return None
    r = list(rows[0])
    r[3] = JobState(r[3])
    return JobRecord(*r)


# -- the calls --------------------------------------------------------------------


def enqueue(
    queue_name: str,
    payload: Any,
    priority: int | None,
    run_at: datetime | None,
    max_attempts: int | None,
    idempotency_key: str | None,
) -> Call[int]:
    args = {
        "queue_name": _text(queue_name, "queue_name"),
        "payload": _json(payload, "payload"),
        "priority": _integer(priority, "priority"),
        "run_at": _timestamp(run_at, "run_at"),
        "max_attempts": _integer(max_attempts, "max_attempts"),
        "idempotency_key": _text(idempotency_key, "idempotency_key"),
    }
    return _call("oq_enqueue", _required(args, "queue_name", "payload"), _scalar)


def enqueue_batch(
    queue_name: str,
    payloads: Sequence[Any],
    priority: int | None,
    run_at: datetime | None,
    max_attempts: int | None,
) -> Call[list[int]]:
    if isinstance(payloads, str | bytes | dict) or not isinstance(payloads, Sequence):
        raise InvalidArgument(f"payloads must be a list, got {type(payloads).__name__}")
    args = {
        "queue_name": _text(queue_name, "queue_name"),
        "payloads": _json(list(payloads), "payloads"),
        "priority": _integer(priority, "priority"),
        "run_at": _timestamp(run_at, "run_at"),
        "max_attempts": _integer(max_attempts, "max_attempts"),
    }
    return _call("oq_enqueue_batch", _required(args, "queue_name"), _column)


def lease(queue_name: str, worker_id: str, lease_seconds: int | None, batch_size: int) -> Call[list[Leased]]:
    args = {
        "queue_name": _text(queue_name, "queue_name"),
        "worker_id": _text(worker_id, "worker_id"),
        "lease_seconds": _integer(lease_seconds, "lease_seconds"),
        "batch_size": _integer(batch_size, "batch_size"),
    }
    required = _required(args, "queue_name", "worker_id", "batch_size")
    return _call("oq_lease", required, _leased(queue_name), table=True)


def heartbeat(
    job_id: int, lease_token: UUID | str, lease_seconds: int | None, queue_name: str | None = None
) -> Call[datetime | None]:
    args = {
        "job_id": _integer(job_id, "job_id"),
        "lease_token": _token(lease_token),
        "lease_seconds": _integer(lease_seconds, "lease_seconds"),
        "queue_name": _text(queue_name, "queue_name"),
    }
    return _call("oq_heartbeat", _required(args, "job_id", "lease_token"), _scalar)


def ack(job_id: int, lease_token: UUID | str, result: Any, queue_name: str | None = None) -> Call[bool]:
    args = {
        "job_id": _integer(job_id, "job_id"),
        "lease_token": _token(lease_token),
        "result": _json(result, "result"),
        "queue_name": _text(queue_name, "queue_name"),
    }
    return _call("oq_ack", _required(args, "job_id", "lease_token"), _scalar)


def ack_many(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID | str],
    results: Sequence[Any] | None,
    queue_name: str | None = None,
) -> Call[list[int]]:
    ids, tokens, values = (
        _list(job_ids, "job_ids"),
        _list(lease_tokens, "lease_tokens"),
        _list(results, "results"),
    )
    args = {
        "job_ids": None if ids is None else [_integer(i, "job_ids[]") for i in ids],
        "lease_tokens": None if tokens is None else [_token(t) for t in tokens],
        "results": None if values is None else [_json(v, "results[]") for v in values],
        "queue_name": _text(queue_name, "queue_name"),
    }
    return _call("oq_ack_many", _required(args, "job_ids", "lease_tokens"), _column, table=True)


def nack(
    job_id: int,
    lease_token: UUID | str,
    error: str | None,
    retry_in: timedelta | None,
    retry: bool,
    queue_name: str | None = None,
) -> Call[str | None]:
    args = {
        "job_id": _integer(job_id, "job_id"),
        "lease_token": _token(lease_token),
        "error": _text(error, "error"),
        "retry_in": _interval(retry_in, "retry_in"),
        "retry": _flag(retry, "retry"),
        "queue_name": _text(queue_name, "queue_name"),
    }
    return _call("oq_nack", _required(args, "job_id", "lease_token"), _scalar)


def reap() -> Call[int]:
    return _call("oq_reap", {}, _scalar)


def cancel(job_id: int) -> Call[bool]:
    return _call("oq_cancel", _required({"job_id": _integer(job_id, "job_id")}, "job_id"), _scalar)


def replay(job_id: int) -> Call[bool]:
    return _call("oq_replay", _required({"job_id": _integer(job_id, "job_id")}, "job_id"), _scalar)


def configure_queue(
    queue_name: str,
    max_attempts: int | None,
    lease_seconds: int | None,
    backoff_base: timedelta | None,
    backoff_max: timedelta | None,
) -> Call[None]:
    args = {
        "queue_name": _text(queue_name, "queue_name"),
        "max_attempts": _integer(max_attempts, "max_attempts"),
        "lease_seconds": _integer(lease_seconds, "lease_seconds"),
        "backoff_base": _interval(backoff_base, "backoff_base"),
        "backoff_max": _interval(backoff_max, "backoff_max"),
    }
    return _call("oq_configure_queue", _required(args, "queue_name"), lambda rows: None)


def stats() -> Call[list[QueueStats]]:
    return _call("oq_stats", {}, _stats, table=True)


def purge(older_than: timedelta, include_dead: bool) -> Call[int]:
    args = {
        "older_than": _interval(older_than, "older_than"),
        "include_dead": _flag(include_dead, "include_dead"),
    }
    return _call("oq_purge", _required(args, "older_than"), _scalar)


def purge_batch(older_than: timedelta, include_dead: bool, max_rows: int | None) -> Call[int]:
    args = {
        "older_than": _interval(older_than, "older_than"),
        "include_dead": _flag(include_dead, "include_dead"),
        "max_rows": _integer(max_rows, "max_rows"),
    }
    return _call("oq_purge_batch", _required(args, "older_than"), _scalar)


def set_queue_notify(queue_name: str, mode: str) -> Call[None]:
    args = {"queue_name": _text(queue_name, "queue_name"), "mode": _text(mode, "mode")}
    return _call("oq_set_queue_notify", _required(args, "queue_name", "mode"), lambda rows: None)


def wait(queue_names: Sequence[str], worker_id: str, seconds: int | None) -> Call[None]:
    args = {
        "queue_names": _texts(queue_names, "queue_names"),
        "worker_id": _text(worker_id, "worker_id"),
        "seconds": _integer(seconds, "seconds"),
    }
    return _call("oq_wait", _required(args, "queue_names", "worker_id"), lambda rows: None)


def health() -> Call[list[HealthCheck]]:
    return _call("oq_health", {}, lambda rows: [HealthCheck(*row) for row in rows], table=True)


def next_run_at(queue_names: Sequence[str]) -> Call[datetime | None]:
    args = {"queue_names": _texts(queue_names, "queue_names")}
    return _call("oq_next_run_at", _required(args, "queue_names"), _scalar)


def limited_queues(queue_names: Sequence[str]) -> Call[list[str]]:
    """Which of these queues have a max_running or a rate_limit, sorted (oq_limited_queues)."""
    args = {"queue_names": _texts(queue_names, "queue_names")}
    return _call("oq_limited_queues", _required(args, "queue_names"), lambda rows: list(_scalar(rows) or []))


def set_queue_max_payload(queue_name: str, max_bytes: int | None) -> Call[None]:
    args = {"queue_name": _text(queue_name, "queue_name"), "max_bytes": _integer(max_bytes, "max_bytes")}
    return _call("oq_set_queue_max_payload", _required(args, "queue_name"), lambda rows: None)


def schema_version() -> Call[int]:
    return _call("oq_schema_version", {}, _scalar)


def settled(job_id: int, worker_id: str, attempt: int) -> Call[str | None]:
    args = {
        "job_id": _integer(job_id, "job_id"),
        "worker_id": _text(worker_id, "worker_id"),
        "attempt": _integer(attempt, "attempt"),
    }
    return _call("oq_settled", _required(args, "job_id", "worker_id", "attempt"), _scalar)


def get_job(job_id: int) -> Call[JobRecord | None]:
    return Call(
        f"select {_JOB_COLUMNS} from openqueue.jobs where id = %(job_id)s::bigint",
        {"job_id": _integer(job_id, "job_id")},
        _job_record,
    )


# -- recurring schedules (contract sections 7 and 9) -----------------------------------

_TYPES.update(
    {
        "schedule_name": "text",
        "cron": "text",
        "timezone": "text",
        "after": "timestamptz",
        "as_of": "timestamptz",
    }
)


def schedule(
    schedule_name: str,
    cron: str,
    queue_name: str,
    payload: Any,
    priority: int | None,
    max_attempts: int | None,
    timezone: str | None,
) -> Call[None]:
    args = {
        "schedule_name": _text(schedule_name, "schedule_name"),
        "cron": _text(cron, "cron"),
        "queue_name": _text(queue_name, "queue_name"),
        "payload": _json(payload, "payload"),
        "priority": _integer(priority, "priority"),
        "max_attempts": _integer(max_attempts, "max_attempts"),
        "timezone": _text(timezone, "timezone"),
    }
    required = _required(args, "schedule_name", "cron", "queue_name")
    return _call("oq_schedule", required, lambda rows: None)


def unschedule(schedule_name: str) -> Call[bool]:
    args = {"schedule_name": _text(schedule_name, "schedule_name")}
    return _call("oq_unschedule", _required(args, "schedule_name"), _scalar)


def cron_next(cron: str, after: datetime, timezone: str | None) -> Call[datetime]:
    args = {
        "cron": _text(cron, "cron"),
        "after": _timestamp(after, "after"),
        "timezone": _text(timezone, "timezone"),
    }
    if after is not None and not 2 <= after.year < 9990:
        # The answer may lie up to eight years after it (a leap day): beyond the years
        # a datetime can hold, psycopg could not read it back.
        raise InvalidArgument("after must be between the years 2 and 9989 (a datetime holds years 1 to 9999)")
    return _call("oq_cron_next", _required(args, "cron", "after"), _scalar)


def tick(as_of: datetime | None) -> Call[int]:
    return _call("oq_tick", {"as_of": _timestamp(as_of, "as_of")}, _scalar)


# -- the worker runtime's own statements ------------------------------------------------
# Each wraps a contract function so that the database, not the worker's clock,
# says how much time is left: intervals come back as seconds (float) computed
# against the database's now(), and the worker schedules them on its monotonic
# clock. Arguments are the worker's own and already checked.

# Any constant: it only has to be the same for every worker (and differ from install's).
REAP_LOCK_KEY = "openqueue.reap"


def lease_timed(
    queue_name: str, worker_id: str, lease_seconds: int | None, batch_size: int, durable: bool = True
) -> Call[list[tuple[Leased, float]]]:
    """oq_lease, each row with the seconds left on its lease.

    ``durable=False`` commits the lease without waiting for the WAL flush
    (``synchronous_commit = off`` for this one transaction): about one fsync
    less between a job becoming due and its handler starting. A crash of the
    server can then forget a lease granted in the last moments before it;
    the job is simply leasable again and its first lease token is unknown,
    so that worker's ack answers false: delivery stays at-least-once and at
    most one lease is valid at any moment.
    """
    inner = lease(queue_name, worker_id, lease_seconds, batch_size)
    function_call = inner.query.removeprefix("select * from ")
    query = f"select l.*, extract(epoch from l.lease_expires_at - now())::float8 from {function_call} as l"
    if not durable:
        query = (
            "with commit_mode as materialized (select set_config('synchronous_commit', 'off', true))"
            f" select l.*, extract(epoch from l.lease_expires_at - now())::float8"
            f" from commit_mode, {function_call} as l"
        )
    as_leased = _leased(queue_name)

    def decode(rows: Rows) -> list[tuple[Leased, float]]:
        return list(zip(as_leased(rows), (r[9] for r in rows), strict=True))

    return Call(query, inner.params, decode)


def _array_literal(values: Sequence[object]) -> str:
    """``{1,2,3}``: arrays of ids and tokens as one text parameter.

    psycopg adapts a list element by element in Python (about 8 us each);
    joining plain ints and hex UUIDs is some 50 times cheaper, and the
    worker's hot path sends two such arrays per batch.
    """
    return "{" + ",".join(map(str, values)) + "}"


def _token_literal(tokens: Sequence[UUID]) -> str:
    return "{" + ",".join(token.hex for token in tokens) + "}"


def _queue_literal(queue_names: Sequence[str]) -> str:
    """``{"a","b"}``: queue names (``[A-Za-z0-9_.:-]``, checked by SQL) as one text parameter."""
    return "{" + ",".join(f'"{name}"' for name in queue_names) + "}"


def heartbeat_many(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    lease_seconds: int | None,
    queue_names: Sequence[str] | None = None,
) -> Call[list[tuple[int, datetime | None, float | None]]]:
    """oq_heartbeat for every (id, token) pair in ONE statement: (id, new expiry, seconds left).

    ``queue_names[i]``: job i's queue, passed as oq_heartbeat's queue_name
    (contract section 10); None: not passed.
    """
    if queue_names is None:
        query = (
            "with beats as materialized ("
            " select u.job_id, openqueue.oq_heartbeat(job_id => u.job_id, lease_token => u.lease_token,"
            " lease_seconds => %(lease_seconds)s::integer) as expires_at"
            " from unnest(%(job_ids)s::bigint[], %(lease_tokens)s::uuid[]) as u (job_id, lease_token))"
            " select b.job_id, b.expires_at, extract(epoch from b.expires_at - now())::float8 from beats as b"
        )
        params: dict[str, Any] = {}
    else:
        query = (
            "with beats as materialized ("
            " select u.job_id, openqueue.oq_heartbeat(job_id => u.job_id, lease_token => u.lease_token,"
            " lease_seconds => %(lease_seconds)s::integer, queue_name => u.queue_name) as expires_at"
            " from unnest(%(job_ids)s::bigint[], %(lease_tokens)s::uuid[], %(queue_names)s::text[])"
            " as u (job_id, lease_token, queue_name))"
            " select b.job_id, b.expires_at, extract(epoch from b.expires_at - now())::float8 from beats as b"
        )
        params = {"queue_names": _queue_literal(queue_names)}
    params.update(
        {
            "job_ids": _array_literal(job_ids),
            "lease_tokens": _token_literal(lease_tokens),
            "lease_seconds": lease_seconds,
        }
    )
    return Call(query, params, lambda rows: [(r[0], r[1], r[2]) for r in rows])


def ack_many_json(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    results: Sequence[str | None] | None,
    queue_names: Sequence[str] | None = None,
) -> Call[list[int]]:
    """oq_ack_many with results already serialised to JSON text (None: no result).

    The results travel as one JSON array, unpacked in order in SQL; a JSON
    ``null`` element (the handler returned None) becomes SQL NULL, as with oq_ack.
    ``queue_names[i]``: job i's queue (contract section 10): one oq_ack_many
    per queue, given its queue_name, all in one statement; None: one call
    without queue_name.
    """
    if queue_names is None:
        return _ack_many_group(job_ids, lease_tokens, results, None, "")
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(queue_names):
        groups.setdefault(name, []).append(index)
    if len(groups) == 1:
        return _ack_many_group(job_ids, lease_tokens, results, queue_names[0], "")
    parts: list[str] = []
    params: dict[str, Any] = {}
    for number, (name, indexes) in enumerate(groups.items()):
        part = _ack_many_group(
            [job_ids[i] for i in indexes],
            [lease_tokens[i] for i in indexes],
            None if results is None else [results[i] for i in indexes],
            name,
            f"_{number}",
        )
        parts.append(part.query)
        params.update(part.params)
    # Each group's ids in input order, the groups in order of first appearance.
    query = "select a.* from (" + " union all ".join(f"({part})" for part in parts) + ") as a"
    return Call(query, params, _column)


def _ack_many_group(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    results: Sequence[str | None] | None,
    queue_name: str | None,
    suffix: str,
) -> Call[list[int]]:
    ids, tokens = f"job_ids{suffix}", f"lease_tokens{suffix}"
    sent: dict[str, Any] = {ids: _array_literal(job_ids), tokens: _token_literal(lease_tokens)}
    arguments = f"job_ids => %({ids})s::bigint[], lease_tokens => %({tokens})s::uuid[]"
    if results is not None:
        sent[f"results{suffix}"] = "[" + ",".join("null" if text is None else text for text in results) + "]"
        arguments += (
            ", results => array(select nullif(e.value, 'null'::jsonb)"
            f" from jsonb_array_elements(%(results{suffix})s::jsonb) with ordinality as e (value, position)"
            " order by e.position)"
        )
    if queue_name is not None:  # not "queue_name": ack_many_and_lease sends the lease's too
        sent[f"acked_queue{suffix}"] = queue_name
        arguments += f", queue_name => %(acked_queue{suffix})s::text"
    return Call(f"select * from openqueue.oq_ack_many({arguments})", sent, _column)


def ack_many_routed(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    results: Sequence[str | None] | None,
    queue_name: str,
) -> Call[list[int]]:
    """oq_ack_many of one queue's jobs as a call Citus routes to the queue's node.

    Every argument a plain parameter (results as jsonb[]), the statement a
    plain ``select * from f(...)``: what Citus delegates.
    """
    arguments = "job_ids => %(job_ids)s::bigint[], lease_tokens => %(lease_tokens)s::uuid[]"
    sent: dict[str, Any] = {
        "job_ids": _array_literal(job_ids),
        "lease_tokens": _token_literal(lease_tokens),
        "queue_name": queue_name,
    }
    if results is not None:
        sent["results"] = [None if text is None else Jsonb(json.loads(text)) for text in results]
        arguments += ", results => %(results)s::jsonb[]"
    arguments += ", queue_name => %(queue_name)s::text"
    return Call(f"select * from openqueue.oq_ack_many({arguments})", sent, _column)


def reap_exclusive() -> Call[int | None]:
    """oq_reap unless another worker is reaping right now (then NULL, nothing done).

    The transaction-level advisory lock lives exactly as long as this one
    autocommit statement, so one reaper runs at a time and nobody waits.
    """
    return Call(
        "select case when pg_try_advisory_xact_lock(hashtextextended(%(key)s, 0))"
        " then openqueue.oq_reap() end",
        {"key": REAP_LOCK_KEY},
        _scalar,
    )


def next_run_in(queue_names: Sequence[str]) -> Call[float | None]:
    """Seconds from the database's now() to the earliest future run_at of these queues."""
    return Call(
        "select extract(epoch from openqueue.oq_next_run_at(queue_names => %(queue_names)s::text[]) - now())"
        "::float8",
        {"queue_names": list(queue_names)},
        _scalar,
    )


# -- flow control (contract section 8) -----------------------------------------------------


def pause_queue(queue_name: str) -> Call[bool]:
    args = {"queue_name": _text(queue_name, "queue_name")}
    return _call("oq_pause_queue", _required(args, "queue_name"), _scalar)


def resume_queue(queue_name: str) -> Call[bool]:
    args = {"queue_name": _text(queue_name, "queue_name")}
    return _call("oq_resume_queue", _required(args, "queue_name"), _scalar)


def set_queue_limits(
    queue_name: str, max_running: int | None, rate_limit: int | None, rate_period: timedelta | None
) -> Call[None]:
    # max_running and rate_limit are always sent: NULL means "no limit", not "unchanged".
    query = (
        "select openqueue.oq_set_queue_limits(queue_name => %(queue_name)s::text,"
        " max_running => %(max_running)s::integer, rate_limit => %(rate_limit)s::integer"
    )
    args = {
        "queue_name": _text(queue_name, "queue_name"),
        "max_running": _integer(max_running, "max_running"),
        "rate_limit": _integer(rate_limit, "rate_limit"),
    }
    _required(args, "queue_name")
    if rate_period is not None:
        args["rate_period"] = _interval(rate_period, "rate_period")
        query += ", rate_period => %(rate_period)s::interval"
    return Call(query + ")", args, lambda rows: None)


def queue_settings() -> Call[list[QueueSettings]]:
    """oq_queue_settings(): every configured queue's settings, limits and pause."""
    return _call("oq_queue_settings", {}, lambda rows: [QueueSettings(*row) for row in rows], table=True)


_SCHEDULE_COLUMNS = (
    "schedule_name, cron, queue_name, payload, priority, max_attempts, timezone, "
    "next_run_at, last_run_at, created_at"
)


def list_schedules() -> Call[list[Schedule]]:
    """Every row of the openqueue.schedules view, by name."""
    return Call(
        f"select {_SCHEDULE_COLUMNS} from openqueue.schedules order by schedule_name",
        {},
        lambda rows: [Schedule(*row) for row in rows],
    )


def _required(args: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if args[name] is None:
            raise InvalidArgument(f"{name} must not be None")
    return args


# -- contract section 10: scale-out on Citus ----------------------------------------------


def distribute() -> Call[None]:
    return _call("oq_distribute", {}, lambda rows: None)


def nodes() -> Call[list[tuple[str, int, bool]]]:
    """The active primary nodes of a Citus cluster: (host, port, is_coordinator); none without Citus."""
    return _call("oq_nodes", {}, lambda rows: [(r[0], r[1], r[2]) for r in rows], table=True)


# -- reading openqueue.jobs for operators (the CLI, the dashboard) ----------------------
# Reads go through the view, column by column: lease_token is never selected.

_JOB_STATES = tuple(state.value for state in JobState)


def _job_records(rows: Rows) -> list[JobRecord]:
    return [record for record in (_job_record([row]) for row in rows) if record is not None]


def _job_filters(
    queue_name: str | None,
    status: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
) -> tuple[list[str], dict[str, Any]]:
    """WHERE clauses and parameters for the job filters shared by list_jobs and count_jobs."""
    if _text(status, "status") is not None and status not in _JOB_STATES:
        shown = status if len(status) <= 40 else status[:40] + "..."  # type: ignore[arg-type]
        raise InvalidArgument(f"status must be one of {', '.join(_JOB_STATES)}, got {shown!r}")
    for name, age in (("older_than", older_than), ("newer_than", newer_than)):
        if _interval(age, name) is not None and age < timedelta(0):  # type: ignore[operator]
            raise InvalidArgument(f"{name} must not be negative")
    params = {
        "queue_name": _text(queue_name, "queue_name"),
        "status": status,
        "older_than": older_than,
        "newer_than": newer_than,
    }
    clauses = {
        "queue_name": "queue_name = %(queue_name)s::text",
        "status": "status = %(status)s::text",
        "older_than": "created_at < now() - %(older_than)s::interval",
        "newer_than": "created_at >= now() - %(newer_than)s::interval",
    }
    sent = {name: value for name, value in params.items() if value is not None}
    return [clauses[name] for name in sent], sent


def list_jobs(
    queue_name: str | None,
    status: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int | None,
    offset: int,
    after_id: int | None,
) -> Call[list[JobRecord]]:
    """Jobs from openqueue.jobs, newest first (highest id first).

    ``older_than`` / ``newer_than`` compare ``created_at`` with now();
    ``after_id`` pages by key: only jobs listed after that id (smaller ids).
    ``limit`` None: every match.
    """
    where, params = _job_filters(queue_name, status, older_than, newer_than)
    if _integer(limit, "limit") is not None and limit < 1:  # type: ignore[operator]
        raise InvalidArgument("limit must be at least 1")
    if _integer(offset, "offset") is None or offset < 0:
        raise InvalidArgument("offset must be an int of at least 0")
    if _integer(after_id, "after_id") is not None:
        where.append("id < %(after_id)s::bigint")
        params["after_id"] = after_id
    query = f"select {_JOB_COLUMNS} from openqueue.jobs"
    if where:
        query += " where " + " and ".join(where)
    query += " order by id desc"
    if limit is not None:
        query += " limit %(limit)s::bigint"
        params["limit"] = limit
    if offset:
        query += " offset %(offset)s::bigint"
        params["offset"] = offset
    return Call(query, params, _job_records)


def count_jobs(
    queue_name: str | None,
    status: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
) -> Call[int]:
    """How many jobs of openqueue.jobs match the filters of :func:`list_jobs`."""
    where, params = _job_filters(queue_name, status, older_than, newer_than)
    query = "select count(*) from openqueue.jobs"
    if where:
        query += " where " + " and ".join(where)
    return Call(query, params, _scalar)


def replay_many(job_ids: Sequence[int]) -> Call[list[int]]:
    """oq_replay for each id, in one statement: the ids it replayed, in the order given."""
    ids = _list(job_ids, "job_ids")
    if ids is None:
        raise InvalidArgument("job_ids must not be None")
    checked = [_integer(i, "job_ids[]") for i in ids]
    if any(i is None for i in checked):
        raise InvalidArgument("job_ids[] must not contain None")
    query = (
        "with replayed as materialized ("
        " select u.id, u.position, openqueue.oq_replay(job_id => u.id) as done"
        " from unnest(%(job_ids)s::bigint[]) with ordinality as u (id, position))"
        " select r.id from replayed as r where r.done order by r.position"
    )
    return Call(query, {"job_ids": checked}, _column)


# Any constant: the same for every worker, different from the reaper's.
TICK_LOCK_KEY = "openqueue.tick"


def tick_exclusive() -> Call[int | None]:
    """oq_tick() unless another worker is ticking right now (then NULL, nothing done).

    As with :func:`reap_exclusive`, the transaction-level advisory lock lasts
    this one autocommit statement: one ticker at a time and nobody waits.
    oq_tick is safe concurrently anyway; the lock only spares the others the work.
    """
    return Call(
        "select case when pg_try_advisory_xact_lock(hashtextextended(%(key)s, 0))"
        " then openqueue.oq_tick() end",
        {"key": TICK_LOCK_KEY},
        _scalar,
    )


def ack_many_and_lease(
    job_ids: Sequence[int],
    lease_tokens: Sequence[UUID],
    results: Sequence[str | None] | None,
    queue_name: str,
    worker_id: str,
    lease_seconds: int | None,
    batch_size: int,
    queue_names: Sequence[str] | None = None,
) -> Call[tuple[list[int], list[tuple[Leased, float]]]]:
    """:func:`ack_many_json` and :func:`lease_timed` in ONE statement, so one transaction.

    The worker's hot path: the jobs that just finished are acked and the slots
    they freed are refilled with one round trip and one (durable) commit
    instead of two. Neither call depends on the other (an ack frees no slot
    the database knows of), and each keeps its own meaning: the statement
    fails or commits as a whole, and then ``oq_ack_many`` answered exactly as
    alone. Returns (ids acked, leased rows with the seconds left on their lease).
    """
    ack = ack_many_json(job_ids, lease_tokens, results, queue_names)
    lease_call = lease(queue_name, worker_id, lease_seconds, batch_size)
    ack_function = ack.query.removeprefix("select * from ")
    if ack_function == ack.query:  # several queues: a union of calls
        ack_function = f"({ack.query})"
    lease_function = lease_call.query.removeprefix("select * from ")
    query = (
        "with acked as materialized (select coalesce(array_agg(a.id), '{}'::bigint[]) as ids"
        f" from {ack_function} as a (id))"
        " select acked.ids, l.*, extract(epoch from l.lease_expires_at - now())::float8"
        f" from acked left join lateral {lease_function} as l on true"
    )
    as_leased = _leased(queue_name)

    def decode(rows: Rows) -> tuple[list[int], list[tuple[Leased, float]]]:
        acked = list(rows[0][0]) if rows else []
        leased_rows = [r[1:] for r in rows if r[1] is not None]
        return acked, list(zip(as_leased(leased_rows), (r[9] for r in leased_rows), strict=True))

    return Call(query, {**ack.params, **lease_call.params}, decode)
