"""oq_cron_next (contract section 7): exact answers for the hard cases, and a
property test against an independent evaluator written here in Python.

The evaluator walks UTC minute by minute (jumping only over stretches where
the UTC offset stays the same and nothing can match), reads each instant in
the zone with zoneinfo and applies the contract's rules directly: a wall time
that does not exist never shows up, and of a wall time that occurs twice only
the first occurrence (``fold == 0``) counts.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def cron_next(conn: psycopg.Connection, cron: str, after: datetime | str, timezone: str | None = None):
    if timezone is None:
        row = conn.execute(
            "select openqueue.oq_cron_next(cron => %s::text, after => %s::timestamptz)", (cron, after)
        ).fetchone()
    else:
        row = conn.execute(
            "select openqueue.oq_cron_next(cron => %s::text, after => %s::timestamptz, timezone => %s::text)",
            (cron, after, timezone),
        ).fetchone()
    return row[0]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- exact answers -------------------------------------------------------------------------

EXACT = [
    # (cron, after (UTC), timezone, expected (UTC))
    ("* * * * *", "2024-01-01 00:00:00", "UTC", "2024-01-01 00:01:00"),  # strictly after
    ("* * * * *", "2024-01-01 00:00:30", "UTC", "2024-01-01 00:01:00"),
    ("0 0 * * *", "2024-01-01 00:00:00", "UTC", "2024-01-02 00:00:00"),
    ("0 0 * * *", "2023-12-31 23:59:59.999999", "UTC", "2024-01-01 00:00:00"),
    # leap days
    ("0 0 29 2 *", "2024-01-01 00:00:00", "UTC", "2024-02-29 00:00:00"),
    ("0 0 29 2 *", "2024-02-29 00:00:00", "UTC", "2028-02-29 00:00:00"),
    ("0 0 29 2 *", "2096-03-01 00:00:00", "UTC", "2104-02-29 00:00:00"),  # 2100 is no leap year
    # month ends: the 31st skips the shorter months
    ("0 12 31 * *", "2024-01-31 12:00:00", "UTC", "2024-03-31 12:00:00"),
    ("0 12 31 * *", "2024-04-01 00:00:00", "UTC", "2024-05-31 12:00:00"),
    ("0 0 30 * *", "2024-01-30 00:00:00", "UTC", "2024-03-30 00:00:00"),
    # the classic OR rule: both day fields restricted
    ("0 0 13 * 5", "2024-09-01 00:00:00", "UTC", "2024-09-06 00:00:00"),  # Friday the 6th first
    ("0 0 13 * 5", "2024-09-10 00:00:00", "UTC", "2024-09-13 00:00:00"),  # the 13th (also a Friday)
    ("0 0 1 * 1", "2024-01-01 00:00:00", "UTC", "2024-01-08 00:00:00"),
    ("0 0 15 * 0", "2024-06-10 00:00:00", "UTC", "2024-06-15 00:00:00"),  # the 15th before Sunday 16th
    # only one restricted: that one alone
    ("0 0 * * 1", "2024-01-01 00:00:00", "UTC", "2024-01-08 00:00:00"),
    ("0 0 1 * *", "2024-01-01 00:00:00", "UTC", "2024-02-01 00:00:00"),
    # day of week 0 and 7 are both Sunday
    ("0 0 * * 7", "2024-01-01 00:00:00", "UTC", "2024-01-07 00:00:00"),
    ("0 0 * * 0", "2024-01-01 00:00:00", "UTC", "2024-01-07 00:00:00"),
    ("0 0 * * 5-7", "2024-01-01 00:00:00", "UTC", "2024-01-05 00:00:00"),
    # steps, ranges, lists
    ("*/15 * * * *", "2024-01-01 10:07:00", "UTC", "2024-01-01 10:15:00"),
    ("*/15 * * * *", "2024-01-01 10:45:00", "UTC", "2024-01-01 11:00:00"),
    ("10-40/15 * * * *", "2024-01-01 10:26:00", "UTC", "2024-01-01 10:40:00"),
    ("10-40/15 * * * *", "2024-01-01 10:40:00", "UTC", "2024-01-01 11:10:00"),
    ("5,35 8-9 * * *", "2024-01-01 09:35:00", "UTC", "2024-01-02 08:05:00"),
    ("0 9 * * 1-5", "2024-01-05 09:00:00", "UTC", "2024-01-08 09:00:00"),  # Friday -> Monday
    ("*/15 * * * 1-5", "2024-01-06 12:00:00", "UTC", "2024-01-08 00:00:00"),
    ("0 0 1 */3 *", "2024-02-01 00:00:00", "UTC", "2024-04-01 00:00:00"),
    ("0 0 1,15 1,7 *", "2024-01-15 00:00:00", "UTC", "2024-07-01 00:00:00"),
    # macros
    ("@hourly", "2024-01-01 10:00:00", "UTC", "2024-01-01 11:00:00"),
    ("@daily", "2024-01-01 10:00:00", "UTC", "2024-01-02 00:00:00"),
    ("@weekly", "2024-01-01 00:00:00", "UTC", "2024-01-07 00:00:00"),  # Sunday 00:00
    ("@monthly", "2024-01-31 00:00:00", "UTC", "2024-02-01 00:00:00"),
    ("@yearly", "2024-01-01 00:00:00", "UTC", "2025-01-01 00:00:00"),
    ("@annually", "2024-06-01 00:00:00", "UTC", "2025-01-01 00:00:00"),
    # a zone without DST
    ("0 2 * * *", "2024-01-01 00:00:00", "Asia/Tokyo", "2024-01-01 17:00:00"),
    ("30 9 * * *", "2024-01-01 00:00:00", "Asia/Kolkata", "2024-01-01 04:00:00"),
    # Europe/Berlin, spring forward on 2024-03-31: 02:00 CET -> 03:00 CEST (01:00 UTC)
    ("30 2 * * *", "2024-03-30 12:00:00", "Europe/Berlin", "2024-04-01 00:30:00"),  # 31st skipped
    ("30 2 * * *", "2024-03-29 12:00:00", "Europe/Berlin", "2024-03-30 01:30:00"),
    ("0 3 * * *", "2024-03-30 12:00:00", "Europe/Berlin", "2024-03-31 01:00:00"),
    ("30 1 * * *", "2024-03-30 12:00:00", "Europe/Berlin", "2024-03-31 00:30:00"),
    ("*/30 * * * *", "2024-03-31 00:30:00", "Europe/Berlin", "2024-03-31 01:00:00"),  # 01:30 -> 03:00
    ("0 2 * * *", "2024-03-30 02:00:00", "Europe/Berlin", "2024-04-01 00:00:00"),
    # Europe/Berlin, fall back on 2024-10-27: 03:00 CEST -> 02:00 CET (01:00 UTC)
    ("30 2 * * *", "2024-10-26 12:00:00", "Europe/Berlin", "2024-10-27 00:30:00"),  # the first 02:30
    ("30 2 * * *", "2024-10-27 00:30:00", "Europe/Berlin", "2024-10-28 01:30:00"),  # never the second
    ("30 2 * * *", "2024-10-27 00:45:00", "Europe/Berlin", "2024-10-28 01:30:00"),
    ("0 3 * * *", "2024-10-26 12:00:00", "Europe/Berlin", "2024-10-27 02:00:00"),
    ("*/15 * * * *", "2024-10-27 00:45:00", "Europe/Berlin", "2024-10-27 02:00:00"),  # 02:xx once
    ("0 * * * *", "2024-10-27 00:00:00", "Europe/Berlin", "2024-10-27 02:00:00"),
    ("0 0 * * *", "2024-10-26 00:00:00", "Europe/Berlin", "2024-10-26 22:00:00"),
    # America/New_York, spring forward 2024-03-10 02:00 EST -> 03:00 EDT (07:00 UTC)
    ("30 2 * * *", "2024-03-09 12:00:00", "America/New_York", "2024-03-11 06:30:00"),
    ("59 1 * * *", "2024-03-09 12:00:00", "America/New_York", "2024-03-10 06:59:00"),
    ("0 3 * * *", "2024-03-09 12:00:00", "America/New_York", "2024-03-10 07:00:00"),
    # America/New_York, fall back 2024-11-03 02:00 EDT -> 01:00 EST (06:00 UTC)
    ("30 1 * * *", "2024-11-02 12:00:00", "America/New_York", "2024-11-03 05:30:00"),  # first 01:30
    ("30 1 * * *", "2024-11-03 05:30:00", "America/New_York", "2024-11-04 06:30:00"),
    ("30 1 * * *", "2024-11-03 06:00:00", "America/New_York", "2024-11-04 06:30:00"),
    ("0 2 * * *", "2024-11-02 12:00:00", "America/New_York", "2024-11-03 07:00:00"),
    # southern hemisphere: Australia/Sydney falls back on 2024-04-07 03:00 -> 02:00 (16:00 UTC)
    ("30 2 * * *", "2024-04-06 00:00:00", "Australia/Sydney", "2024-04-06 15:30:00"),
    ("30 2 * * *", "2024-04-06 15:30:00", "Australia/Sydney", "2024-04-07 16:30:00"),
    # the timezone argument is optional: UTC
]


@pytest.mark.parametrize(("cron", "after", "timezone", "expected"), EXACT)
def test_exact_answers(conn, cron, after, timezone, expected):
    assert cron_next(conn, cron, utc(after), timezone) == utc(expected)


def test_timezone_defaults_to_utc_and_null_means_utc(conn):
    assert cron_next(conn, "0 2 * * *", utc("2024-01-01 00:00:00")) == utc("2024-01-01 02:00:00")
    row = conn.execute("select openqueue.oq_cron_next('0 2 * * *', '2024-01-01 00:00+00', null)").fetchone()
    assert row[0] == utc("2024-01-01 02:00:00")


def test_positional_call_and_whitespace(conn):
    row = conn.execute(
        "select openqueue.oq_cron_next('  0   2 * *\t* ', '2024-01-01 00:00+00', 'Europe/Berlin')"
    ).fetchone()
    assert row[0] == utc("2024-01-01 01:00:00")


def test_session_timezone_changes_nothing(conn):
    conn.execute("set timezone = 'Pacific/Auckland'")
    got = cron_next(conn, "0 2 * * *", utc("2024-01-01 00:00:00"), "Europe/Berlin")
    assert got == utc("2024-01-01 01:00:00")


def test_every_result_is_strictly_after(conn):
    start = utc("2024-10-26 23:00:00")
    slots = [start]
    for _ in range(200):
        slots.append(cron_next(conn, "*/5 * * * *", slots[-1], "Europe/Berlin"))
    assert all(b > a for a, b in itertools.pairwise(slots))
    # across the fall-back hour, 02:00-02:55 fire once each: 12 slots, not 24
    local = [s.astimezone(ZoneInfo("Europe/Berlin")) for s in slots]
    two_oclock = [t for t in local if t.date().isoformat() == "2024-10-27" and t.hour == 2]
    assert len(two_oclock) == 12 and all(t.fold == 0 for t in two_oclock)


# -- the independent evaluator --------------------------------------------------------------

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def py_parse(cron: str) -> tuple[list[set[int]], bool, bool]:
    fields = MACROS.get(cron.strip().lower(), cron).split()
    assert len(fields) == 5
    sets = []
    for field, (low, high) in zip(fields, BOUNDS, strict=True):
        values: set[int] = set()
        for item in field.split(","):
            part, _, step = item.partition("/")
            if part == "*":
                a, b = low, high
            elif "-" in part:
                a, b = map(int, part.split("-"))
            else:
                a = b = int(part)
            values.update(range(a, b + 1, int(step) if step else 1))
        sets.append(values)
    sets[4] = {v % 7 for v in sets[4]}
    return sets, fields[2] == "*", fields[4] == "*"


def py_never(cron: str) -> bool:
    (_, _, days, months, _), dom_star, dow_star = py_parse(cron)
    if dom_star or not dow_star:
        return False
    longest = max(29 if m == 2 else 30 if m in (4, 6, 9, 11) else 31 for m in months)
    return min(days) > longest


def _day_ok(parsed: tuple[list[set[int]], bool, bool], wall: datetime) -> bool:
    (_, _, days, months, weekdays), dom_star, dow_star = parsed
    if wall.month not in months:
        return False
    dom_ok, dow_ok = wall.day in days, (wall.weekday() + 1) % 7 in weekdays
    if dom_star and dow_star:
        return True
    if dom_star:
        return dow_ok
    if dow_star:
        return dom_ok
    return dom_ok or dow_ok


def py_matches(cron: str, wall: datetime) -> bool:
    parsed = py_parse(cron)
    minutes, hours = parsed[0][0], parsed[0][1]
    return wall.minute in minutes and wall.hour in hours and _day_ok(parsed, wall)


def py_cron_next(cron: str, after: datetime, timezone: str, horizon: timedelta) -> datetime | None:
    """First slot strictly after ``after`` within ``horizon``, by walking UTC minutes."""
    zone = ZoneInfo(timezone)
    parsed = py_parse(cron)
    minutes, hours = parsed[0][0], parsed[0][1]
    u = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    end = after + horizon
    while u <= end:
        local = u.astimezone(zone)
        wall = local.replace(tzinfo=None)
        day_ok = _day_ok(parsed, wall)
        if day_ok and wall.hour in hours and wall.minute in minutes and local.fold == 0:
            return u
        # Nothing can match before the next wall midnight (day not allowed) or
        # the next wall hour (hour not allowed). Jump there only if the UTC
        # offset is the same at both ends, so that wall time and UTC advance
        # alike in between; otherwise step one minute.
        if not day_ok:
            jump = timedelta(minutes=(24 - wall.hour) * 60 - wall.minute)
        elif wall.hour not in hours:
            jump = timedelta(minutes=60 - wall.minute)
        else:
            jump = timedelta(minutes=1)
        if jump > timedelta(minutes=1) and (u + jump).astimezone(zone).utcoffset() == local.utcoffset():
            u += jump
        else:
            u += timedelta(minutes=1)
    return None


def _item(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    pair = st.tuples(number, number).map(sorted)
    return st.one_of(
        number.map(str),
        pair.map(lambda p: f"{p[0]}-{p[1]}"),
        st.integers(1, high - low + 1).map(lambda s: f"*/{s}"),
        st.tuples(pair, st.integers(1, 10)).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
    )


def _field(low: int, high: int, star_weight: int) -> st.SearchStrategy[str]:
    return st.one_of(
        *([st.just("*")] * star_weight),
        st.lists(_item(low, high), min_size=1, max_size=3).map(",".join),
    )


CRONS = st.one_of(
    st.sampled_from(sorted(MACROS)),
    st.tuples(_field(0, 59, 1), _field(0, 23, 1), _field(1, 31, 3), _field(1, 12, 3), _field(0, 7, 2)).map(
        " ".join
    ),
)
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Pacific/Chatham",
    "Europe/London",
]
# Instants near daylight-saving changes, where the rules matter.
TRANSITIONS = [
    utc(t)
    for t in (
        "2024-03-31 01:00:00",
        "2024-10-27 01:00:00",
        "2024-03-10 07:00:00",
        "2024-11-03 06:00:00",
        "2024-04-06 16:00:00",
        "2024-10-05 16:00:00",
        "2018-11-04 03:00:00",
        "2019-02-17 02:00:00",
        "2024-04-06 13:45:00",
        "2024-09-28 14:00:00",
    )
]
AFTERS = st.one_of(
    st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    st.tuples(st.sampled_from(TRANSITIONS), st.integers(-36 * 60 * 60, 36 * 60 * 60)).map(
        lambda t: t[0] + timedelta(seconds=t[1])
    ),
)
HORIZON = timedelta(days=400)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cron=CRONS, after=AFTERS, timezone=st.sampled_from(ZONES))
def test_matches_an_independent_evaluator(conn, cron, after, timezone):
    if py_never(cron):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="cron"):
            cron_next(conn, cron, after, timezone)
        return
    got = cron_next(conn, cron, after, timezone)
    expected = py_cron_next(cron, after, timezone, HORIZON)
    if expected is not None:
        assert got == expected, (cron, after, timezone)
    else:
        # Beyond the brute-force horizon: the answer must still be a slot, and later.
        assert got > after + HORIZON
        local = got.astimezone(ZoneInfo(timezone))
        assert py_matches(cron, local.replace(tzinfo=None)) and local.fold == 0
