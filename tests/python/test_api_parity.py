"""Client and AsyncClient are one API, and that API covers every oq_* SQL function."""

from __future__ import annotations

import inspect

import pytest

from openqueue_py import AsyncClient, Client


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def _normalise(annotation: object) -> object:
    """Annotations are strings (postponed evaluation); the async ones only swap types."""
    if annotation is inspect.Parameter.empty:
        return annotation
    text = str(annotation)
    for async_name, sync_name in (
        ("AsyncConnectionPool", "ConnectionPool"),
        ("AsyncConnection", "Connection"),
        ("AsyncIterator", "Iterator"),
        ("AsyncClient", "Client"),
    ):
        text = text.replace(async_name, sync_name)
    return text


def _shape(function: object) -> list[tuple]:
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def _annotations(function: object) -> tuple:
    signature = inspect.signature(function)
    return (
        [(p.name, _normalise(p.annotation)) for p in signature.parameters.values()],
        _normalise(signature.return_annotation),
    )


def test_same_public_methods():
    assert set(_public_methods(Client)) == set(_public_methods(AsyncClient))


@pytest.mark.parametrize("name", sorted(set(_public_methods(Client)) | {"__init__"}))
def test_same_signature(name):
    sync = getattr(Client, name)
    async_ = getattr(AsyncClient, name)
    assert _shape(sync) == _shape(async_)
    assert _annotations(sync) == _annotations(async_)


@pytest.mark.parametrize("name", sorted(set(_public_methods(AsyncClient)) - {"connection"}))
def test_async_methods_are_coroutines(name):
    assert inspect.iscoroutinefunction(getattr(AsyncClient, name))
    assert not inspect.iscoroutinefunction(getattr(Client, name))


def test_context_managers():
    assert hasattr(Client, "__enter__") and hasattr(Client, "__exit__")
    assert inspect.iscoroutinefunction(AsyncClient.__aenter__)
    assert inspect.iscoroutinefunction(AsyncClient.__aexit__)


def _sql_functions(conn) -> dict[str, list[tuple[str, bool]]]:
    """oq_* function name -> its input arguments as (name, has a default)."""
    rows = conn.execute(
        """
        select p.proname, p.proargnames, p.proargmodes, p.pronargs, p.pronargdefaults
        from pg_proc as p
        where p.pronamespace = 'openqueue'::regnamespace
          and p.proname like 'oq\\_%'
        order by p.proname
        """
    ).fetchall()
    functions: dict[str, list[tuple[str, bool]]] = {}
    for name, arg_names, arg_modes, nargs, ndefaults in rows:
        assert name not in functions, f"{name} is overloaded"
        names = arg_names or []
        modes = arg_modes or ["i"] * len(names)
        inputs = [n for n, m in zip(names, modes, strict=True) if m in ("i", "b", "v")]
        assert len(inputs) == nargs
        functions[name] = [(n, i >= nargs - ndefaults) for i, n in enumerate(inputs)]
    return functions


def test_every_sql_function_has_a_client_method_with_its_argument_names(conn):
    functions = _sql_functions(conn)
    assert {"oq_enqueue", "oq_lease", "oq_ack", "oq_nack", "oq_stats", "oq_purge"} <= set(functions)
    for cls in (Client, AsyncClient):
        methods = _public_methods(cls)
        for function, arguments in functions.items():
            name = function.removeprefix("oq_")
            assert name in methods, f"{cls.__name__} has no method for {function}"
            variants = [name, "lease_many"] if name == "lease" else [name]
            for variant in variants:
                parameters = [
                    p
                    for p in inspect.signature(methods[variant]).parameters.values()
                    if p.name != "self" and p.kind is not inspect.Parameter.KEYWORD_ONLY
                ]
                sql_names = [n for n, _ in arguments]
                if variant == "lease":
                    # lease() is lease_many() with batch_size 1.
                    sql_names.remove("batch_size")
                assert [p.name for p in parameters] == sql_names, f"{cls.__name__}.{variant}"
                defaults = {n for n, has_default in arguments if has_default}
                for p in parameters:
                    has_default = p.default is not inspect.Parameter.empty
                    assert has_default == (p.name in defaults), f"{cls.__name__}.{variant}({p.name})"
                # conn= is keyword-only on every method that runs SQL.
                conn_parameter = inspect.signature(methods[variant]).parameters["conn"]
                assert conn_parameter.kind is inspect.Parameter.KEYWORD_ONLY
                assert conn_parameter.default is None
