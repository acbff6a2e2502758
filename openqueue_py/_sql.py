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
from .models import HealthCheck, Job, JobRecord, JobState, Leased, QueueStats

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


def heartbeat_many(
    job_ids: Sequence[int], lease_tokens: Sequence[UUID], lease_seconds: int | None
) -> Call[list[tuple[int, datetime | None, float | None]]]:
    """oq_heartbeat for every (id, token) pair in ONE statement: (id, new expiry, seconds left)."""
    query = (
        "with beats as materialized ("
        " select u.job_id, openqueue.oq_heartbeat(job_id => u.job_id, lease_token => u.lease_token,"
        " lease_seconds => %(lease_seconds)s::integer) as expires_at"
        " from unnest(%(job_ids)s::bigint[], %(lease_tokens)s::uuid[]) as u (job_id, lease_token))"
        " select b.job_id, b.expires_at, extract(epoch from b.expires_at - now())::float8 from beats as b"
    )
    params = {
        "job_ids": _array_literal(job_ids),
        "lease_tokens": _token_literal(lease_tokens),
        "lease_seconds": lease_seconds,
    }
    return Call(query, params, lambda rows: [(r[0], r[1], r[2]) for r in rows])


def ack_many_json(
    job_ids: Sequence[int], lease_tokens: Sequence[UUID], results: Sequence[str | None] | None
) -> Call[list[int]]:
    """oq_ack_many with results already serialised to JSON text (None: no result).

    The results travel as one JSON array, unpacked in order in SQL; a JSON
    ``null`` element (the handler returned None) becomes SQL NULL, as with oq_ack.
    """
    sent = {"job_ids": _array_literal(job_ids), "lease_tokens": _token_literal(lease_tokens)}
    arguments = "job_ids => %(job_ids)s::bigint[], lease_tokens => %(lease_tokens)s::uuid[]"
    if results is not None:
        sent["results"] = "[" + ",".join("null" if text is None else text for text in results) + "]"
        arguments += (
            ", results => array(select nullif(e.value, 'null'::jsonb)"
            " from jsonb_array_elements(%(results)s::jsonb) with ordinality as e (value, position)"
            " order by e.position)"
        )
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
