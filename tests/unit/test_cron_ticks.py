"""Cron ticks as real instants in a time zone, across daylight saving time changes.

The rule: a tick is an instant at which the zone's clocks show a wall time
the expression matches. The property test checks :class:`CronTicks` against
that rule applied minute by minute around clock changes in three zones (one
with a 30-minute change), with cronsim itself as the judge of a match.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from ferryman.sensors.schedule import CronTicks, iso

PARIS = ZoneInfo("Europe/Paris")


def walk(
    expression: str, start: str, count: int, *, zone: ZoneInfo = PARIS, reverse: bool = False
) -> list[str]:
    ticks = CronTicks(expression, zone).walk(datetime.fromisoformat(start), reverse=reverse)
    return [iso(tick) for tick in itertools.islice(ticks, count)]


def test_spring_forward_skips_the_wall_times_that_do_not_exist() -> None:
    # 2026-03-29 in Paris: 02:00 CET becomes 03:00 CEST (01:00Z).
    assert walk("30 2 * * *", "2026-03-27T12:00:00Z", 3) == [
        "2026-03-28T01:30:00Z",  # 02:30 CET
        "2026-03-30T00:30:00Z",  # 02:30 CEST: no 02:30 at all on the 29th
        "2026-03-31T00:30:00Z",
    ]
    # Every half hour of real time still ticks: the wall times 02:00 and 02:30 do not exist.
    assert walk("*/30 * * * *", "2026-03-29T00:00:00Z", 4) == [
        "2026-03-29T00:30:00Z",  # 01:30 CET
        "2026-03-29T01:00:00Z",  # 03:00 CEST
        "2026-03-29T01:30:00Z",
        "2026-03-29T02:00:00Z",
    ]
    assert walk("0 2 * * *", "2026-03-30T01:00:00Z", 2, reverse=True) == [
        "2026-03-30T00:00:00Z",
        "2026-03-28T01:00:00Z",
    ]


def test_fall_back_ticks_once_at_each_real_instant_of_the_repeated_hour() -> None:
    # 2026-10-25 in Paris: 03:00 CEST becomes 02:00 CET (01:00Z); 02:xx happens twice.
    assert walk("30 2 * * *", "2026-10-24T12:00:00Z", 3) == [
        "2026-10-25T00:30:00Z",  # 02:30 CEST
        "2026-10-25T01:30:00Z",  # 02:30 CET, an hour of real time later
        "2026-10-26T01:30:00Z",
    ]
    hourly = walk("0 * * * *", "2026-10-24T22:30:00Z", 5)
    assert hourly == [
        "2026-10-24T23:00:00Z",  # 01:00 CEST
        "2026-10-25T00:00:00Z",  # 02:00 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET
        "2026-10-25T02:00:00Z",  # 03:00 CET
        "2026-10-25T03:00:00Z",
    ]
    # Started inside the repeated hour, the second occurrences are still ahead.
    assert walk("*/20 * * * *", "2026-10-25T00:30:00Z", 6) == [
        "2026-10-25T00:40:00Z",  # 02:40 CEST
        "2026-10-25T01:00:00Z",  # 02:00 CET
        "2026-10-25T01:20:00Z",
        "2026-10-25T01:40:00Z",
        "2026-10-25T02:00:00Z",  # 03:00 CET
        "2026-10-25T02:20:00Z",
    ]
    assert walk("30 2 * * *", "2026-10-26T12:00:00Z", 3, reverse=True) == [
        "2026-10-26T01:30:00Z",
        "2026-10-25T01:30:00Z",
        "2026-10-25T00:30:00Z",
    ]


def test_seconds_field_and_aliases() -> None:
    utc = ZoneInfo("UTC")
    assert walk("* * * * * *", "2026-01-01T00:00:00Z", 3, zone=utc) == [
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:02Z",
        "2026-01-01T00:00:03Z",
    ]
    assert walk("*/15 * * * * *", "2026-01-01T00:00:00Z", 2, zone=utc) == [
        "2026-01-01T00:00:15Z",
        "2026-01-01T00:00:30Z",
    ]
    assert walk("@daily", "2026-01-01T00:00:00Z", 1, zone=utc) == ["2026-01-02T00:00:00Z"]
    # reverse: a tick at the start itself counts
    assert walk("@hourly", "2026-01-01T05:00:00Z", 1, zone=utc, reverse=True) == [
        "2026-01-01T05:00:00Z"
    ]


def matches(expression: str, wall: datetime) -> bool:
    """cronsim's own answer: does the expression fire at this wall time?"""
    return next(CronSim(expression, wall - timedelta(seconds=1)), None) == wall


# Clock changes in three zones; Lord Howe moves its clocks by 30 minutes.
CHANGES = [
    ("Europe/Paris", "2026-03-29T01:00:00Z"),
    ("Europe/Paris", "2026-10-25T01:00:00Z"),
    ("America/New_York", "2026-03-08T07:00:00Z"),
    ("America/New_York", "2026-11-01T06:00:00Z"),
    ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
    ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
]
EXPRESSIONS = ["*/15 * * * *", "0,30 * * * *", "45 1,2 * * *", "0 */2 * * *", "10 * * * *"]


@settings(max_examples=60, deadline=None)
@given(
    change=st.sampled_from(CHANGES),
    expression=st.sampled_from(EXPRESSIONS),
    offset_minutes=st.integers(min_value=-240, max_value=240),
    reverse=st.booleans(),
)
def test_ticks_are_the_instants_whose_wall_time_matches(
    change: tuple[str, str], expression: str, offset_minutes: int, reverse: bool
) -> None:
    zone = ZoneInfo(change[0])
    start = datetime.fromisoformat(change[1]) + timedelta(minutes=offset_minutes)
    window = timedelta(hours=5)
    step = timedelta(minutes=-1 if reverse else 1)
    expected = []
    moment = start if reverse else start + step
    while abs(moment - start) <= window:
        if matches(expression, moment.astimezone(zone).replace(tzinfo=None)):
            expected.append(moment.astimezone(UTC))
        moment += step
    found = []
    for tick in CronTicks(expression, zone).walk(start, reverse=reverse):
        if abs(tick - start) > window:
            break
        found.append(tick)
    assert [iso(t) for t in found] == [iso(t) for t in expected]
