"""Schedules: a poll sensor whose cursor is the last cron tick it handled.

``app.schedule(name, job=..., cron=...)`` registers a poll sensor like any
other: it is evaluated by ``tick`` and ``run``, paused and resumed, listed by
``ferryman sensors`` and keeps an evaluation history. Each evaluation asks
for one run per tick that came since the cursor, with run_key
``"{name}:{tick as ISO 8601 UTC}"``, and moves the cursor to the newest tick:
the runs and the cursor commit in one transaction, by the poll sensor's
compare-and-swap. A tick therefore gets exactly one run however many
processes evaluate the schedule and whenever they are killed.

**Ticks are real instants.** The cron expression is matched against the wall
clock of ``timezone`` (``zoneinfo``): a tick is an instant at which the
zone's clocks show a time the expression matches. A wall time that does not
exist (skipped when clocks spring forward) is no tick; a wall time that
occurs twice (clocks falling back) is two ticks, one per real instant, each
with its own run_key. The expression is matched by ``cronsim``, on naive wall
times only; the time zone is applied here, so the rule above holds whatever
the library does about daylight saving time.

**Catching up.** Ticks that came while nothing evaluated the schedule (no
daemon, the schedule paused, a crash) are handled at the next evaluation by
``catch_up``: ``"all"`` runs each of them, ``"latest"`` only the newest,
``"none"`` those less than ``grace`` seconds old. In every mode at most
``max_catch_up`` ticks run per evaluation — the newest ones; the others are
skipped, counted in the evaluation's ``items_skipped`` and logged.

The cursor reads ``last tick <ISO UTC>, next tick <ISO UTC>``. A schedule
evaluated for the first time starts there: its cursor becomes the newest tick
already passed, with no run, and its first run is the next tick.
``set-cursor`` accepts the same text or a bare ISO 8601 instant (with
``catch_up="all"``, an earlier instant runs the ticks since then: a backfill).
"""

from __future__ import annotations

import heapq
import json
import logging
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ferryman import settings
from ferryman.errors import ConfigurationError
from ferryman.model import DEFAULT_SENSOR_BACKOFF, RunRequest, SensorResult
from ferryman.sensors.context import SensorContext
from ferryman.sensors.registry import (
    DEFAULT_POLL_TIMEOUT,
    SensorDefinition,
    SensorKind,
    define_sensor,
)

log = logging.getLogger("ferryman.sensors")

CATCH_UP_MODES = ("latest", "all", "none")
DEFAULT_MAX_CATCH_UP = 100
DEFAULT_GRACE = 60.0
DEFAULT_SCHEDULE_INTERVAL = 60.0
# Longer than any clock change of any zone (one hour, or two in some past
# years): around a change, the wall times of a fold are searched this far back.
DST_MARGIN = timedelta(hours=3)
# Skipped ticks are counted one by one; past this many the count stops there.
COUNT_LIMIT = 100_000
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CURSOR = re.compile(r"last tick (?P<last>\S+), next tick (?P<next>\S+)")

Clock = Callable[[], datetime]


def iso(instant: datetime) -> str:
    """An instant as ISO 8601 UTC to the second: ``2026-03-29T01:00:00Z``."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant with its offset (``Z`` or ``+01:00``), as UTC; ValueError if not."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; write it as 2026-01-01T00:00:00Z")
    return moment.astimezone(UTC)


class CronTicks:
    """The instants at which a cron expression fires on the wall clock of a zone."""

    def __init__(self, expression: str, zone: ZoneInfo) -> None:
        self.expression = ALIASES.get(expression.strip().lower(), expression)
        self.zone = zone
        CronSim(self.expression, datetime(2000, 1, 1))  # CronSimError if it cannot be read

    def wall_instants(self, wall: datetime) -> list[datetime]:
        """The instants (UTC, in order) at which the zone's clocks show ``wall``.

        None when the wall time was skipped by a clock change, two when the
        clocks went back over it.
        """
        found: list[datetime] = []
        for fold in (0, 1):
            instant = wall.replace(tzinfo=self.zone, fold=fold).astimezone(UTC)
            shown = instant.astimezone(self.zone).replace(tzinfo=None)
            if shown == wall and instant not in found:
                found.append(instant)
        return sorted(found)

    def _changes_near(self, instant: datetime) -> bool:
        before = (instant - DST_MARGIN).astimezone(self.zone).utcoffset()
        after = (instant + DST_MARGIN).astimezone(self.zone).utcoffset()
        return before != after

    def walk(self, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        """The ticks after ``start`` (``reverse``: at or before it), nearest first.

        Wall times come from cronsim in order; each becomes its instants. The
        first instant of a wall time never decreases as wall times grow (the
        last never increases as they shrink), so an instant found is given
        out once the wall times have passed it: only a fold's second
        instants come late. Near a clock change the search starts
        ``DST_MARGIN`` away, so that a fold's wall times on the other side of
        ``start`` are seen.
        """
        wall = start.astimezone(self.zone).replace(tzinfo=None)
        margin = DST_MARGIN if self._changes_near(start) else timedelta(0)
        # Reverse iteration gives wall times strictly before its start: one
        # second later, so that a tick at ``start`` itself is found.
        origin = wall + margin + timedelta(seconds=1) if reverse else wall - margin
        sign = -1.0 if reverse else 1.0
        pending: list[tuple[float, datetime]] = []
        for candidate in CronSim(self.expression, origin, reverse=reverse):
            instants = self.wall_instants(candidate)
            if not instants:
                continue  # skipped by the clocks
            for instant in instants:
                if (instant <= start) if reverse else (instant > start):
                    heapq.heappush(pending, (sign * instant.timestamp(), instant))
            bound = sign * (instants[-1] if reverse else instants[0]).timestamp()
            while pending and pending[0][0] <= bound:
                yield heapq.heappop(pending)[1]
        while pending:  # cronsim gives up 50 years past its last match
            yield heapq.heappop(pending)[1]

    def next_after(self, start: datetime) -> datetime | None:
        return next(self.walk(start), None)

    def count(self, after: datetime, before: datetime) -> int:
        """How many ticks fall strictly between two instants (at most ``COUNT_LIMIT``)."""
        counted = 0
        for tick in self.walk(after):
            if tick >= before or counted == COUNT_LIMIT:
                break
            counted += 1
        return counted


@dataclass(frozen=True, slots=True)
class Plan:
    """What one evaluation does: the ticks to run, how many it skips, the new last tick."""

    ticks: list[datetime]  # oldest first
    skipped: int
    last: datetime


class Schedule:
    """The function of a schedule's poll sensor, and how it reads its cursor."""

    def __init__(
        self,
        name: str,
        ticks: CronTicks,
        *,
        catch_up: str,
        max_catch_up: int,
        grace: float,
        payload: Any,
        clock: Clock | None,
    ) -> None:
        self.name = name
        self.ticks = ticks
        self.catch_up = catch_up
        self.max_catch_up = max_catch_up
        self.grace = timedelta(seconds=grace)
        self.payload = payload
        self.clock = clock

    # -- the cursor ------------------------------------------------------------

    def cursor_text(self, last: datetime) -> str:
        upcoming = self.ticks.next_after(last)
        return f"last tick {iso(last)}, next tick {iso(upcoming) if upcoming else 'none'}"

    def read_cursor(self, cursor: str) -> tuple[datetime, datetime | None]:
        """The last tick a cursor names and the next one it announces, or ConfigurationError."""
        matched = _CURSOR.fullmatch(cursor.strip())
        try:
            if matched is None:
                return parse_instant(cursor.strip()), None
            upcoming = matched["next"]
            return parse_instant(matched["last"]), (
                None if upcoming == "none" else parse_instant(upcoming)
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"schedule {self.name!r}: cursor {cursor!r} is not "
                f"'last tick <ISO 8601>, next tick <ISO 8601>' nor an ISO 8601 instant ({exc})"
            ) from None

    def check_cursor(self, cursor: str) -> None:
        """Refuse a cursor this schedule cannot read (``set-cursor`` calls it)."""
        self.read_cursor(cursor)

    def seconds_until_next(self, cursor: str | None, started: float) -> float | None:
        """Seconds from ``started`` (the store's clock) to the tick the cursor announces."""
        if cursor is None:
            return None
        try:
            _, upcoming = self.read_cursor(cursor)
        except ConfigurationError:
            return None
        if upcoming is None:
            return None
        now = self.clock().timestamp() if self.clock is not None else started
        return upcoming.timestamp() - now

    # -- evaluation ------------------------------------------------------------

    def plan(self, last: datetime | None, now: datetime) -> Plan:
        """The ticks after ``last`` up to ``now`` to run, by ``catch_up``."""
        limit = 1 if self.catch_up == "latest" else self.max_catch_up
        newest: datetime | None = None
        chosen: list[datetime] = []
        for tick in self.ticks.walk(now, reverse=True):
            if last is not None and tick <= last:
                break
            newest = newest or tick
            if last is None:  # a new schedule starts at the newest tick passed
                break
            if len(chosen) == limit or (self.catch_up == "none" and now - tick > self.grace):
                break
            chosen.append(tick)
        if newest is None:
            return Plan([], 0, last or now)
        if last is None:
            return Plan([], 0, newest)
        chosen.reverse()
        skipped = self.ticks.count(last, chosen[0] if chosen else newest + timedelta(seconds=1))
        return Plan(chosen, skipped, newest)

    def run_request(self, tick: datetime) -> RunRequest:
        payload = (
            self.payload(tick.astimezone(self.ticks.zone))
            if callable(self.payload)
            else ({"tick": iso(tick)} if self.payload is None else self.payload)
        )
        return RunRequest(f"{self.name}:{iso(tick)}", payload)

    def __call__(self, ctx: SensorContext, cursor: str | None) -> SensorResult:
        now = ctx.evaluation_started_at if self.clock is None else self.clock()
        if now.tzinfo is None:
            raise ConfigurationError(
                f"schedule {self.name!r}: its clock returned {now!r}, a time with no time zone"
            )
        last = None if cursor is None else self.read_cursor(cursor)[0]
        plan = self.plan(last, now.astimezone(UTC))
        if plan.skipped:
            shown = f"{plan.skipped}" if plan.skipped < COUNT_LIMIT else f"{COUNT_LIMIT} or more"
            ctx.logger.warning(
                "catch_up=%r: skipped %s missed ticks after %s",
                self.catch_up,
                shown,
                iso(last or now),
            )
        if last is not None and plan.last == last:  # no tick since the cursor: it stays,
            # rewritten only if a new expression or zone announces another next tick
            current = self.cursor_text(last)
            return SensorResult(cursor=None if current == cursor else current)
        return SensorResult(
            run_requests=[self.run_request(tick) for tick in plan.ticks],
            cursor=self.cursor_text(plan.last),
            skipped=plan.skipped,
        )


def define_schedule(
    name: str,
    *,
    job: str,
    cron: str,
    timezone: str,
    payload: Any,
    catch_up: str,
    max_catch_up: int,
    grace: float,
    interval: float,
    clock: Clock | None,
    known_jobs: Collection[str],
) -> SensorDefinition:
    """Check a schedule and build its poll sensor; errors name the schedule and the field."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a schedule needs a name (a non-empty str), got {name!r}")
    if job not in known_jobs:
        raise _bad(
            name,
            "job",
            f"{job!r} is not a registered job (register it with @app.job before the schedule); "
            f"known jobs: {sorted(known_jobs)}",
        )
    ticks = _cron_ticks(name, cron, timezone)
    if catch_up not in CATCH_UP_MODES:
        raise _bad(name, "catch_up", f"must be one of {list(CATCH_UP_MODES)}, got {catch_up!r}")
    settings.count(f"schedule {name!r}: max_catch_up", max_catch_up, minimum=1)
    settings.seconds(f"schedule {name!r}: grace", grace)
    settings.seconds(f"schedule {name!r}: interval", interval, inclusive=False)
    if clock is not None and not callable(clock):
        raise _bad(name, "clock", f"must be a function returning an aware datetime, got {clock!r}")
    _check_payload(name, payload)
    schedule = Schedule(
        name,
        ticks,
        catch_up=catch_up,
        max_catch_up=max_catch_up,
        grace=grace,
        payload=payload,
        clock=clock,
    )
    definition = define_sensor(
        schedule,
        kind=SensorKind.POLL,
        name=name,
        job=job,
        jobs=None,
        interval=interval,
        backoff=DEFAULT_SENSOR_BACKOFF,
        timeout=DEFAULT_POLL_TIMEOUT,
    )
    return replace(definition, until_next=schedule.seconds_until_next)


def _bad(name: str, field: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"schedule {name!r}: {field} {problem}")


def _cron_ticks(name: str, cron: str, timezone: str) -> CronTicks:
    """The ticks of ``cron`` in ``timezone``, each checked."""
    if not isinstance(cron, str):
        raise _bad(name, "cron", f"must be a cron expression (a str), got {cron!r}")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise _bad(
            name, "timezone", f"{timezone!r} is not a known time zone (e.g. 'Europe/Paris')"
        ) from None
    try:
        return CronTicks(cron, zone)
    except CronSimError as exc:
        raise _bad(name, "cron", f"{cron!r} is not a cron expression: {exc}") from None


def _check_payload(name: str, payload: Any) -> None:
    """A payload given as a value (not a function of the tick) must be JSON."""
    if payload is not None and not callable(payload):
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise _bad(name, "payload", f"is not JSON-serialisable: {exc}") from None
