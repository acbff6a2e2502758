"""Every public Client method (and a subset of AsyncClient) under arbitrary Python values (issue 7).

The methods are found by introspection, so one added later is fuzzed too (or
this file fails until it has a strategy). For each example Hypothesis makes
one or more arguments wild and keeps the others sensible, so a wild value is
not hidden behind an earlier argument's error. Wild values: None, wrong types
(str for int, dict for list, bytes, floats, NaN, inf, ints beyond int64, bools
where ints go), NUL-free unicode up to 1 MB, text with NUL, extreme and naive
datetimes, huge and negative timedeltas, deep, cyclic and non-JSON payloads,
lists of mismatched lengths.

CONTRACT section 5: "Bad arguments raise ValueError subclasses before any SQL
runs, or the SQL error unchanged". So each call succeeds (returning what its
annotation says), or raises InvalidArgument, or a psycopg error whose SQLSTATE
is in class 22. Never TypeError, AttributeError, OverflowError,
RecursionError, a psycopg adaptation error (no SQLSTATE) or XX000; and a
failed call writes nothing (the same table fingerprint as tests/sql/test_fuzz.py).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import types
import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openqueue_py import AsyncClient, Client
from openqueue_py.errors import InvalidArgument

pytestmark = pytest.mark.slow

MEGABYTE = 1024 * 1024
NUL_FREE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")

# Lifecycle methods: they take no data arguments, so there is nothing to fuzz.
NOT_FUZZED = {
    "close": "ends the client; no arguments",
    "connection": "lends a connection; no arguments",
    "install": "idempotent installer, covered by tests/test_install.py; no arguments",
    "distribute": "no arguments; 0A000 without Citus (tests/sql/test_scale_out.py, tests/citus/)",
}


class Opaque:
    """An object psycopg and json know nothing about."""


def _cyclic_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def _cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# -- wild values, by kind ------------------------------------------------------

INT64 = 2**63 - 1
floats = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -0.0, 1e308]), st.floats())
huge_ints = st.sampled_from(
    [2**31, -(2**31) - 1, INT64, INT64 + 1, -INT64 - 2, 2**200, -(10**40), 10**4000, 10**5000]
)
ints = st.one_of(huge_ints, st.integers(-(2**64), 2**64), st.sampled_from([0, 1, -1, 86400, 86401]))
nul_texts = st.one_of(st.sampled_from(["\x00", "q\x00", "\x00" * 10]), st.text(min_size=1, max_size=20))
texts = st.one_of(
    st.sampled_from(["", " ", "q", "a" * 128, "a" * 129, "'; drop table x; --", "x" * MEGABYTE, "é" * 9000]),
    st.text(NUL_FREE, max_size=40),
)
naive_or_extreme_datetimes = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.timezones()),
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-23, minutes=-59))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=23, minutes=59))),
            datetime(2000, 2, 29, 12, tzinfo=timezone(timedelta(hours=14))),
            datetime.max,
        ]
    ),
)
timedeltas = st.one_of(
    st.sampled_from(
        [timedelta.max, timedelta.min, timedelta(0), timedelta(microseconds=-1), -timedelta(days=1)]
    ),
    st.timedeltas(),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=30)
)
json_like = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
not_json = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, b"bytes", {1, 2}, frozenset(), (1, 2)]),
    st.builds(Opaque),
    st.builds(_cyclic_list),
    st.builds(_cyclic_dict),
    st.sampled_from([2000, 5000, 50000]).map(_deep),
    st.sampled_from([{(1, 2): 1}, {math.nan: 1}, {None: 1}, {1.5: 1}, {"k": 10**4000}]),
    st.just({"big": "y" * MEGABYTE}),
    st.just("z" * MEGABYTE),
)
uuids = st.one_of(st.uuids(), st.uuids().map(str), st.just(uuid.UUID(int=0)), st.just("not-a-uuid"))

anything = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    texts,
    nul_texts,
    st.binary(max_size=10),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.integers(), max_size=3),
    st.sets(st.integers(), max_size=3),
    st.builds(Opaque),
    st.just(b"\x00"),
    uuids,
    timedeltas,
    naive_or_extreme_datetimes,
)


def listish(element: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists of wild elements, and things that are not lists."""
    return st.one_of(
        st.lists(st.one_of(st.none(), element), max_size=4),
        st.lists(st.one_of(st.none(), element), max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=3), element, max_size=2),
        st.sets(st.integers(), max_size=3),
        st.just(iter([1, 2])),
        st.just(range(3)),
    )


# Argument name -> (sensible values, wild strategy beyond `anything`).
ARGUMENTS: dict[str, tuple[list[Any], st.SearchStrategy[Any]]] = {
    "queue_name": (["q", "fuzz"], st.one_of(texts, nul_texts)),
    "worker_id": (["w", "w2"], st.one_of(texts, nul_texts)),
    "idempotency_key": ([None, "k", "k2"], st.one_of(texts, nul_texts)),
    "error": (["e", None], st.one_of(texts, nul_texts)),
    "mode": (["always", "when_waiting"], st.one_of(texts, nul_texts)),
    "payload": ([{}, {"a": 1}], st.one_of(json_like, not_json)),
    "result": ([None, {}], st.one_of(json_like, not_json)),
    "payloads": ([[{}], []], listish(st.one_of(json_like, not_json))),
    "results": ([None, [{}, None]], listish(st.one_of(json_like, not_json))),
    "priority": ([None, 0, 5], ints),
    "max_attempts": ([None, 3], ints),
    "lease_seconds": ([None, 30], ints),
    "batch_size": ([1, 5], ints),
    "seconds": ([1, None], ints),
    "max_bytes": ([None, 100], ints),
    "max_rows": ([None, 10], ints),
    "job_id": ([1, 2, 3, 4, 5, 6], ints),
    "attempt": ([1, 2], ints),
    "job_ids": ([[1, 2], [3]], listish(ints)),
    "lease_token": ([str(uuid.UUID(int=1)), uuid.UUID(int=2)], uuids),
    "lease_tokens": ([[uuid.UUID(int=1), uuid.UUID(int=2)], [str(uuid.UUID(int=3))]], listish(uuids)),
    "queue_names": ([["q"], ["q", "fuzz"]], listish(st.one_of(texts, nul_texts))),
    "run_at": ([None, datetime(2000, 1, 1, tzinfo=UTC)], naive_or_extreme_datetimes),
    "retry_in": ([None, timedelta(seconds=1)], timedeltas),
    "backoff_base": ([None, timedelta(seconds=1)], timedeltas),
    "backoff_max": ([None, timedelta(minutes=1)], timedeltas),
    "older_than": ([timedelta(hours=1), timedelta(0)], timedeltas),
    "retry": ([True, False], st.booleans()),
    "include_dead": ([False, True], st.booleans()),
    # contract section 7
    "schedule_name": (["s", "s2"], st.one_of(texts, nul_texts)),
    "cron": (["* * * * *", "0 2 * * 1-5", "@daily"], st.one_of(texts, nul_texts)),
    "timezone": ([None, "UTC", "Europe/Berlin"], st.one_of(texts, nul_texts)),
    "after": ([datetime(2024, 1, 1, tzinfo=UTC)], naive_or_extreme_datetimes),
    "as_of": ([None, datetime(2000, 1, 1, tzinfo=UTC)], naive_or_extreme_datetimes),
    "max_running": ([None, 2], ints),
    "rate_limit": ([None, 3], ints),
    "rate_period": ([None, timedelta(seconds=1)], timedeltas),
    # the operators' reads (CLI, dashboard)
    "status": ([None, "pending", "dead"], st.one_of(texts, nul_texts)),
    "newer_than": ([None, timedelta(hours=1)], timedeltas),
    "limit": ([None, 1, 50], ints),
    "offset": ([0, 2], ints),
    "after_id": ([None, 3], ints),
}


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


CLIENT_METHODS = sorted(set(public_methods(Client)) - set(NOT_FUZZED))
# The async client runs the same _sql module: a subset with the most argument checks.
ASYNC_METHODS = ["ack_many", "enqueue", "enqueue_batch", "nack", "next_run_at", "wait"]


def data_parameters(signature: inspect.Signature) -> list[inspect.Parameter]:
    """The data arguments: `self` and the `conn=` escape hatch (a connection, not data) aside."""
    return [p for p in signature.parameters.values() if p.name not in ("self", "conn")]


def test_every_public_method_has_a_strategy():
    for name, signature in public_methods(Client).items():
        if name in NOT_FUZZED:
            continue
        for parameter in data_parameters(signature):
            assert parameter.name in ARGUMENTS, f"no strategy for Client.{name}({parameter.name}): add one"
    assert set(ASYNC_METHODS) <= set(public_methods(AsyncClient))


# -- outcome checks ------------------------------------------------------------------


def fingerprint(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every table of schema openqueue (row count and digest) and the job id sequence."""
    tables = [
        r[0]
        for r in conn.execute(
            "select oid::regclass::text from pg_class "
            "where relnamespace = 'openqueue'::regnamespace and relkind = 'r' order by 1"
        )
    ]
    digest = "select count(*), md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {} as t"
    return [(table, *conn.execute(digest.format(table)).fetchone()) for table in tables] + [
        conn.execute("select last_value, is_called from openqueue.job_id_seq").fetchone()
    ]


def seed(conn: psycopg.Connection) -> None:
    """Jobs in several states (ids 1 to 5) in the queues the sensible values name."""
    conn.execute("select openqueue.oq_enqueue_batch('q', '[{}, {}, {}, {}]')")
    conn.execute("select openqueue.oq_enqueue('fuzz', '{}', idempotency_key => 'k')")
    leased = conn.execute(
        "select id, lease_token from openqueue.oq_lease('q', 'w', batch_size => 3)"
    ).fetchall()
    conn.execute("select openqueue.oq_ack(%s, %s)", leased[0])
    conn.execute("select openqueue.oq_nack(%s, %s, 'x', retry => false)", leased[1])


def conforms(value: Any, hint: Any) -> bool:
    """Whether value is of the (simple) annotated return type."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (element,) = typing.get_args(hint)
        return isinstance(value, list) and all(conforms(v, element) for v in value)
    if origin is tuple:  # tuple[str, int, bool] (Client.nodes(), rows only on Citus)
        args = typing.get_args(hint)
        return (
            isinstance(value, tuple)
            and len(value) == len(args)
            and all(conforms(v, a) for v, a in zip(value, args, strict=True))
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def draw_arguments(data: st.DataObject, signature: inspect.Signature) -> dict[str, Any]:
    parameters = data_parameters(signature)
    if not parameters:
        return {}
    wild = data.draw(st.sets(st.sampled_from([p.name for p in parameters]), min_size=1), label="wild")
    values = {}
    for parameter in parameters:
        sensible, strategy = ARGUMENTS[parameter.name]
        if parameter.name in wild:
            values[parameter.name] = data.draw(st.one_of(strategy, anything), label=parameter.name)
        else:
            values[parameter.name] = data.draw(st.sampled_from(sensible), label=parameter.name)
    return values


def check_outcome(name: str, run: typing.Callable[[], Any], hint: Any, conn: psycopg.Connection) -> None:
    before = fingerprint(conn)
    try:
        value = run()
    except InvalidArgument as exc:
        assert str(exc).strip(), f"{name}: InvalidArgument without a message"
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        assert state.startswith("22"), f"{name}: {type(exc).__name__} SQLSTATE {state!r}: {str(exc)[:300]}"
        assert (exc.diag.message_primary or "").strip(), f"{name}: SQLSTATE {state} without a message"
    else:
        assert conforms(value, hint), f"{name} returned {value!r:.200}, not {hint}"
        return
    assert fingerprint(conn) == before, f"{name} failed and wrote something"


FUZZ_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
)


@pytest.fixture
def fuzz_conn(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("set statement_timeout = '20s'")
        seed(conn)
        yield conn


@pytest.fixture
def sync_client(dsn):
    with Client(dsn, min_size=1, max_size=1) as client:
        yield client


@pytest.fixture
def async_client(dsn):
    loop = asyncio.new_event_loop()
    client = AsyncClient(dsn, min_size=1, max_size=1)
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


@pytest.mark.parametrize("name", CLIENT_METHODS)
@FUZZ_SETTINGS
@given(data=st.data())
def test_client_method_answers_any_value_with_success_invalid_argument_or_class_22(
    fuzz_conn, sync_client, name, data
):
    method = getattr(Client, name)
    hint = typing.get_type_hints(method)["return"]
    values = draw_arguments(data, inspect.signature(method))
    check_outcome(name, lambda: getattr(sync_client, name)(**values), hint, fuzz_conn)


@pytest.mark.parametrize("name", ASYNC_METHODS)
@settings(FUZZ_SETTINGS, max_examples=10)
@given(data=st.data())
def test_async_client_method_answers_any_value_with_success_invalid_argument_or_class_22(
    fuzz_conn, async_client, name, data
):
    loop, client = async_client
    method = getattr(AsyncClient, name)
    hint = typing.get_type_hints(method)["return"]
    values = draw_arguments(data, inspect.signature(method))
    check_outcome(name, lambda: loop.run_until_complete(getattr(client, name)(**values)), hint, fuzz_conn)


# -- regressions: what the fuzzing found ------------------------------------------------


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("enqueue", {"queue_name": "q\x00", "payload": {}}),
        ("enqueue", {"queue_name": "q", "payload": {}, "idempotency_key": "k\x00"}),
        ("lease", {"queue_name": "q", "worker_id": "w\x00"}),
        ("set_queue_notify", {"queue_name": "q", "mode": "always\x00"}),
        ("wait", {"queue_names": ["q", "\x00"], "worker_id": "w"}),
        ("next_run_at", {"queue_names": ["\x00"]}),
    ],
)
def test_text_with_nul_is_an_invalid_argument(client, conn, method, kwargs):
    """psycopg refuses NUL in text with a DataError that has no SQLSTATE (not a ValueError)."""
    before = fingerprint(conn)
    with pytest.raises(InvalidArgument, match="NUL"):
        getattr(client, method)(**kwargs)
    assert fingerprint(conn) == before


def test_nack_error_text_with_nul_is_an_invalid_argument_and_keeps_the_lease(client, conn):
    client.enqueue("q", {})
    leased = client.lease("q", "w")
    with pytest.raises(InvalidArgument, match="error must not contain NUL"):
        client.nack(leased.job.id, leased.lease_token, error="boom\x00")
    assert client.ack(leased.job.id, leased.lease_token) is True


@pytest.mark.parametrize("value", [{"q": 1}, b"q", 5, ["q"]])
def test_text_arguments_must_be_str(client, conn, value):
    """A dict raised psycopg's "cannot adapt"; bytes and ints were cast (b"q" named a queue "\\x71")."""
    before = fingerprint(conn)
    with pytest.raises(InvalidArgument, match="queue_name must be a str"):
        client.enqueue(value, {})
    with pytest.raises(InvalidArgument, match="worker_id must be a str"):
        client.lease("q", value)
    assert fingerprint(conn) == before


@pytest.mark.parametrize("payload", [_deep(5000), [_deep(5000)]])
def test_payload_nested_deeper_than_python_can_serialise_is_an_invalid_argument(client, conn, payload):
    """json.dumps raised RecursionError, which escaped the check."""
    with pytest.raises(InvalidArgument, match="nested too deeply"):
        if isinstance(payload, list):
            client.enqueue_batch("q", payload)
        else:
            client.enqueue("q", payload)
    assert client.stats() == []


@pytest.mark.parametrize("payload", [math.nan, {"x": math.inf}, [-math.inf]])
def test_nan_and_infinity_are_not_json(client, payload):
    """json.dumps wrote NaN/Infinity, which only the server then refused."""
    with pytest.raises(InvalidArgument, match="not JSON-serialisable"):
        client.enqueue("q", payload)


@pytest.mark.parametrize("queue_names", [None, 5, "q", {"q": 1}, {"q"}])
def test_next_run_at_needs_a_list_of_queue_names(client, queue_names):
    """None and 5 raised TypeError from list(); "q" was read as the queues "q" (one per character)."""
    with pytest.raises(InvalidArgument, match="queue_names"):
        client.next_run_at(queue_names)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**5000], ids=["2**63", "-2**63-1", "10**5000"])
def test_integers_beyond_bigint_are_an_invalid_argument(client, conn, value):
    """In a list, an int of more than 4300 digits raised a bare ValueError from psycopg's dumper."""
    before = fingerprint(conn)
    with pytest.raises(InvalidArgument, match="job_ids\\[\\] is out of range for a bigint"):
        client.ack_many([1, value], [uuid.UUID(int=1), uuid.UUID(int=2)])
    with pytest.raises(InvalidArgument, match="priority is out of range for a bigint"):
        client.enqueue("q", {}, priority=value)
    assert fingerprint(conn) == before


@pytest.mark.parametrize(
    "token", [10**5000, b"x" * 16, 5, "x" * MEGABYTE], ids=["10**5000", "bytes", "5", "1MB"]
)
def test_a_lease_token_that_is_not_a_uuid_or_str_is_an_invalid_argument(client, token):
    """str() of a 5000-digit int raises ValueError, and so did the repr in the error message."""
    with pytest.raises(InvalidArgument, match="lease_token") as raised:
        client.heartbeat(1, token)
    assert len(str(raised.value)) < 200
    with pytest.raises(InvalidArgument, match="lease_token"):
        client.ack_many([1], [token])


def test_integers_within_bigint_are_the_databases_to_judge(client):
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        client.enqueue("q", {}, priority=2**31)


@pytest.mark.parametrize("value", ["false", 0, 1, math.nan, [], "no"])
def test_flags_must_be_bool(client, conn, value):
    """bool("false") is True: retry="false" retried a job, include_dead="no" purged dead ones."""
    client.enqueue("q", {})
    leased = client.lease("q", "w")
    before = fingerprint(conn)
    with pytest.raises(InvalidArgument, match="retry must be a bool"):
        client.nack(leased.job.id, leased.lease_token, retry=value)
    with pytest.raises(InvalidArgument, match="include_dead must be a bool"):
        client.purge(timedelta(0), include_dead=value)
    assert fingerprint(conn) == before


def test_nack_retry_none_takes_the_sql_default(client):
    """None means "not sent" everywhere in the client: oq_nack's default retry => true applies."""
    client.enqueue("q", {})
    leased = client.lease("q", "w")
    assert client.nack(leased.job.id, leased.lease_token, error="e", retry=None) == "failed"


def test_async_client_refuses_the_same_values():
    async def scenario() -> None:
        async with AsyncClient("host=unused") as client:  # refused before any connection is opened
            with pytest.raises(InvalidArgument, match="NUL"):
                await client.enqueue("q\x00", {})
            with pytest.raises(InvalidArgument, match="nested too deeply"):
                await client.enqueue("q", _deep(5000))
            with pytest.raises(InvalidArgument, match="queue_names"):
                await client.next_run_at(None)

    asyncio.run(scenario())
