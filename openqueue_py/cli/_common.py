"""What every ``openqueue`` command shares: the DSN option, durations, errors and output.

Errors are one line on stderr (``openqueue --verbose ...`` adds their full
detail) and an exit status from :data:`EXIT_CODES`. Tables fit the terminal
when stdout is one, and are never cut when it is a pipe or a file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click
import psycopg

from .. import _connect
from ..errors import ConnectionFailed, InvalidArgument, NotInstalled, OpenQueueError

EXIT_FAILED = 1  # the command ran and failed: refused by the database, job not in that state ...
EXIT_USAGE = 2  # bad options or arguments (click's own, or refused as invalid by openqueue)
EXIT_CANNOT_CONNECT = 3  # wrong host, port, role, password or database
EXIT_NOT_INSTALLED = 4  # the database has no openqueue schema: run `openqueue install`
EXIT_NOT_FOUND = 5  # a job given by id does not exist

EXIT_CODES = {
    0: "success",
    EXIT_FAILED: "the command failed (the database refused it, the job is not in that state, "
    "or a confirmation was declined)",
    EXIT_USAGE: "bad options or arguments (a bad duration, state, JSON or DSN; a value the database "
    "refuses as invalid)",
    EXIT_CANNOT_CONNECT: "cannot connect (wrong host, port, role, password or database)",
    EXIT_NOT_INSTALLED: "openqueue is not installed in that database (run `openqueue install`)",
    EXIT_NOT_FOUND: "a job given by id does not exist",
}

EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())

F = TypeVar("F", bound=Callable[..., Any])

# SQLSTATEs the functions raise for a bad argument (contract section 4).
_BAD_INPUT_SQLSTATES = {"22023", "22004"}


def _require_dsn(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if not value:
        raise click.UsageError(
            "no database given: pass --dsn DSN, or set OPENQUEUE_DSN (or DATABASE_URL)", ctx=ctx
        )
    return value


def dsn_option(function: F) -> F:
    """``--dsn``, else ``OPENQUEUE_DSN``, else ``DATABASE_URL``."""
    return click.option(
        "--dsn",
        envvar=["OPENQUEUE_DSN", "DATABASE_URL"],
        callback=_require_dsn,
        metavar="DSN",
        help="PostgreSQL connection string (default: $OPENQUEUE_DSN, else $DATABASE_URL).",
    )(function)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(function)


# -- durations ------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_PLAIN = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``7d``, ``1h30m``, ``250ms``, ``2w`` -> timedelta; ValueError otherwise."""
    compact = "".join(text.split()).lower()
    if _PLAIN.fullmatch(compact):
        return timedelta(seconds=float(compact))
    position, total, seen = 0, 0.0, set()
    for match in _PART.finditer(compact):
        if match.start() != position or match[2] in seen:
            break
        seen.add(match[2])
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    else:
        if position == len(compact) and compact:
            return timedelta(seconds=total)
    raise ValueError(f"{text!r} is not a duration: use seconds, or a number with a unit: 90s, 15m, 7d, 1h30m")


def format_duration(value: timedelta | float | None) -> str:
    """A short human form: ``250ms``, ``42s``, ``3m05s``, ``2h10m``, ``7d3h``."""
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return (
            f"{sign}{seconds:.3g}s" if seconds < 10 and seconds != int(seconds) else f"{sign}{seconds:.0f}s"
        )
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    return f"{sign}{minutes}m{secs:02d}s"


class Duration(click.ParamType):
    """A click type for durations; ``whole_seconds`` refuses fractions (for integer settings)."""

    name = "duration"

    def __init__(self, *, positive: bool = False, whole_seconds: bool = False) -> None:
        self.positive = positive
        self.whole_seconds = whole_seconds

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            duration = parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if self.positive and duration <= timedelta(0):
            self.fail(f"{value!r} must be more than zero", param, ctx)
        if self.whole_seconds and duration.total_seconds() != int(duration.total_seconds()):
            self.fail(f"{value!r} must be a whole number of seconds", param, ctx)
        return duration


# -- errors ---------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"openqueue: {message}", err=True)
    sys.exit(code)


def verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("verbose"))


_HINTS = {
    "42501": "the role lacks a privilege: grant it openqueue_admin (or connect as the schema owner)",
    "57014": "the statement was cancelled (statement_timeout?)",
}


def summary(exc: BaseException) -> str:
    """One line: a database error's primary message (and its hint), else the exception's first line."""
    if isinstance(exc, psycopg.Error) and not isinstance(exc, OpenQueueError) and exc.diag.message_primary:
        line = _connect.one_line(exc.diag.message_primary)
        hint = exc.diag.message_hint or _HINTS.get(exc.sqlstate or "")
        return f"{line} (hint: {_connect.one_line(hint)})" if hint else line
    text = str(exc).strip()
    return _connect.one_line(text.splitlines()[0]) if text else type(exc).__name__


def detail(exc: BaseException) -> Iterator[str]:
    """Everything known about an error and its causes, for --verbose."""
    seen: BaseException | None = exc
    while seen is not None:
        yield f"{type(seen).__module__}.{type(seen).__qualname__}: {str(seen).strip()}"
        if isinstance(seen, psycopg.Error) and seen.sqlstate:
            diag = seen.diag
            yield f"  SQLSTATE: {seen.sqlstate}"
            for label, value in (("DETAIL", diag.message_detail), ("HINT", diag.message_hint)):
                if value:
                    yield f"  {label}: {value}"
            if diag.context:
                yield "  CONTEXT: " + diag.context.strip().replace("\n", "\n           ")
        seen = seen.__cause__
    yield "".join(traceback.format_exception(exc)).rstrip()


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, ConnectionFailed):
        return EXIT_CANNOT_CONNECT
    if isinstance(exc, NotInstalled):
        return EXIT_NOT_INSTALLED
    if isinstance(exc, InvalidArgument):
        return EXIT_USAGE
    if isinstance(exc, psycopg.Error) and exc.sqlstate in _BAD_INPUT_SQLSTATES:
        return EXIT_USAGE
    return EXIT_FAILED


@contextmanager
def reported() -> Iterator[None]:
    """Turn a database or OpenQueue error into one line on stderr and its exit status."""
    try:
        yield
    except (psycopg.Error, OpenQueueError) as exc:
        report(exc, exit_code(exc))


def report(exc: BaseException, code: int) -> NoReturn:
    if verbose():
        click.echo(f"openqueue: {summary(exc)}", err=True)
        for line in detail(exc):
            click.echo(line, err=True)
        sys.exit(code)
    fail(summary(exc), code)


# -- output ---------------------------------------------------------------------

# Width for output that is not a terminal: wide enough that nothing is ever cut.
_UNBOUNDED = 1_000_000


def console(*, stderr: bool = False) -> Any:
    """A rich Console on stdout (or stderr): the terminal's width, or no limit when piped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    is_tty = stream.isatty()
    width = shutil.get_terminal_size().columns if is_tty else _UNBOUNDED
    return Console(
        file=stream,
        width=width,
        highlight=False,
        markup=False,
        emoji=False,
        soft_wrap=not is_tty,
        force_terminal=is_tty,
        no_color=not is_tty,
    )


def emit(out: Any, renderable: Any) -> None:
    """Print a renderable; on a pipe or a file, without the padding rich leaves at line ends."""
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    click.echo(text)


def table(*columns: str, numeric: tuple[str, ...] = ()) -> Any:
    from rich import box
    from rich.table import Table

    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        grid.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    return grid


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, timedeltas, enums and UUIDs in a shape json.dumps takes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.compare or field.repr  # LeaseLost and the like are neither
        }
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value.value if hasattr(value, "value") and isinstance(value, str) else value
    return str(value)


def echo_json(value: Any, *, indent: int | None = 2) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=indent, ensure_ascii=False))


def age(moment: datetime | None, now: datetime) -> str:
    """``3m05s ago`` / ``in 12s`` for a timestamp, seen from ``now``."""
    if moment is None:
        return "-"
    delta = (now - moment).total_seconds()
    if delta >= 0:
        return f"{format_duration(delta)} ago"
    return f"in {format_duration(-delta)}"
