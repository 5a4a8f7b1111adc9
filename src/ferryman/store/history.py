"""The queue's and the sensors' past, derived from what the store keeps (read-only).

No table records the queue's depth over time; it follows from the runs' own
times. The runs not finished at a moment ``t`` are those not finished now,
less the ones created since ``t``, plus the ones that finished since ``t``::

    depth(t) = depth(now) - created(t..now) + finished(t..now)

Both terms are counted per time slot by one grouped aggregate each, on the
``created_at`` and ``finished_at`` indexes alone (never the runs' rows), so a
chart costs the number of runs created and finished in its window (and the
slots long past are remembered a while: :class:`SlotCounts`). It is exact
but for runs retried since they finished (their ``finished_at`` cleared: they
count as unfinished from their creation on); a run pruned since was created
and finished before the moments it would change.

The age of the oldest due run at ``t`` is read from an even sample of the
runs created in the window (``SAMPLE`` of them, spread by id, each read by its
primary key) and the oldest due run queued now: a run waited at ``t`` if it was
due (``available_at``) and not yet claimed (``started_at``) nor finished. A
run's times are those of its latest attempt, so a retried run counts from its
retry; the age is exact to about one sampled run's spacing.

A sensor's lag is read from its newest evaluations (``MAX_EVALUATIONS``): how
much later than due each started, due being the previous one's end plus the
sensor's interval (for a push sensor, which has none, the time from one
message's evaluation ending to the next one starting is not lag: its
evaluations' own durations are shown instead).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import EvaluationOutcome, RunStatus
from ferryman.store.read_queries import THROUGHPUT_MINUTES, MinuteCount, id_among
from ferryman.store.read_views import first_created_since
from ferryman.store.schema import runs, sensor_evaluations

SLOTS = 60  # points of a chart
SAMPLE = 500  # runs the oldest-due age is read from, spread over the window by id
CREATED_SLACK = 3600.0  # a run due in the window may have been created this long before it
MAX_EVALUATIONS = 2000  # newest evaluations a sensor's lag is read from
SETTLED = 60.0  # a slot that ended this long ago is counted once and reused ...
REUSE = 600.0  # ... for this long (see SlotCounts)
MINUTE = 60.0  # the slots a wider slot not ended yet is counted in (see SlotCounts.counts)
MAX_REMEMBERED = 20_000  # slots remembered at most (custom windows each bring their own)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueuePoint:
    """The queue at one moment: runs not finished (queued or running) and the oldest due's age."""

    at: float
    depth: int
    oldest_due_age: float | None  # None: no run was due and waiting then


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LagSlot:
    """How late a sensor's evaluations in one time slot started, in seconds."""

    start: float
    evaluations: int
    p50: float | None
    max: float | None


def _slot_width(since: float, until: float, slots: int) -> float:
    return max(1.0, math.ceil((until - since) / slots))


class SlotCounts:
    """Runs created and finished per time slot, the slots long past remembered a while.

    Slots are aligned on multiples of their width since the epoch, so the same
    slot is the same on every request. A slot that ended ``SETTLED`` seconds
    ago or more is counted once and reused for ``REUSE`` seconds: a chart over a
    week then counts only its newest slot again, not a week of runs. A run
    retried or pruned since changes a reused slot's count only when it is
    counted again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, float, int], tuple[Any, float]] = {}

    def counts(
        self,
        conn: sa.Connection,
        column: sa.ColumnElement[Any],
        first: int,
        up_to: float,
        width: float,
    ) -> dict[int, int]:
        """``{slot: rows}`` for every slot from ``first`` to the one holding ``up_to``,
        counting rows with ``column < up_to``.

        Slots of whole minutes that have not ended yet are counted minute by
        minute, the minutes that have ended remembered as the slots are: a
        week's chart (slots of 168 minutes) then counts its newest minute or
        two again, not its newest 168 (20,000 runs at ten million runs over 60
        days, 200 at 100,000).
        """
        last, settled = int(up_to // width), int((up_to - SETTLED) // width)
        if width <= MINUTE or width % MINUTE:

            def count(since: float) -> dict[int, Any]:
                return _count_slots(conn, column, since, up_to, width)

            return self._reused(str(column.key), first, last, settled, width, count, 0)
        ended = max(first, settled)  # the first slot not ended; those before, whole

        def count_ended(since: float) -> dict[int, Any]:
            return _count_slots(conn, column, since, ended * width, width)

        older: dict[int, int] = {}
        if ended > first:
            older = self._reused(str(column.key), first, ended - 1, ended, width, count_ended, 0)
        newest = dict.fromkeys(range(ended, last + 1), 0)
        by_minute = self.counts(conn, column, int(ended * width // MINUTE), up_to, MINUTE)
        for minute, rows in by_minute.items():
            newest[int(minute * MINUTE // width)] += rows
        return older | newest

    def finishes(
        self, conn: sa.Connection, first: int, at: float, width: float
    ) -> dict[int, tuple[int, int]]:
        """``{slot: (succeeded, failed or dead)}``: the runs finished in every slot from
        ``first`` to the one holding ``at`` (the whole of it), by outcome."""
        last = int(at // width)

        def count(since: float) -> dict[int, Any]:
            return _count_finishes(conn, since, (last + 1) * width, width)

        settled = int((at - SETTLED) // width)
        return self._reused("finishes by outcome", first, last, settled, width, count, (0, 0))

    def _reused(
        self,
        name: str,
        first: int,
        last: int,
        settled: int,
        width: float,
        count: Callable[[float], dict[int, Any]],
        empty: Any,
    ) -> dict[int, Any]:
        """Slots ``first`` to ``last``: those remembered from ``first`` on as they were
        counted, the rest by ``count`` (from the first not remembered); of those, the
        ones before ``settled`` (ended ``SETTLED`` seconds ago) are remembered."""
        now = time.monotonic()
        with self._lock:
            if len(self._known) > MAX_REMEMBERED:
                self._known.clear()
            known = {}
            for slot in range(first, last + 1):
                hit = self._known.get((name, width, slot))
                if hit is None or now - hit[1] > REUSE:
                    break
                known[slot] = hit[0]
        start = first + len(known)
        counted = count(start * width)
        with self._lock:
            for slot in range(start, min(settled, last + 1)):
                self._known[(name, width, slot)] = (counted.get(slot, empty), now)
        return known | {slot: counted.get(slot, empty) for slot in range(start, last + 1)}


def _count_slots(
    conn: sa.Connection, column: sa.ColumnElement[Any], since: float, up_to: float, width: float
) -> dict[int, int]:
    """Rows with ``since <= column < up_to`` counted per slot (``column // width``), from the
    column's index alone."""
    slot = sa.func.floor(column / width).label("slot")
    query = (
        sa.select(slot, sa.func.count())
        .select_from(runs)
        .where(column >= since, column < up_to)
        .group_by(slot)
    )
    return {int(index): int(count) for index, count in conn.execute(query)}


def _count_finishes(
    conn: sa.Connection, since: float, up_to: float, width: float
) -> dict[int, tuple[int, int]]:
    """Runs with ``since <= finished_at < up_to`` per slot: ``(succeeded, failed or dead)``."""
    slot = sa.func.floor(runs.c.finished_at / width).label("slot")
    rows = conn.execute(
        sa.select(slot, runs.c.status, sa.func.count())
        .where(runs.c.finished_at >= since, runs.c.finished_at < up_to)
        .group_by(slot, runs.c.status)
    )
    found: dict[int, tuple[int, int]] = {}
    for index, status, count in rows:
        succeeded, failed = found.get(int(index), (0, 0))
        if status == RunStatus.SUCCEEDED.value:
            succeeded += int(count)
        elif status in (RunStatus.FAILED.value, RunStatus.DEAD.value):
            failed += int(count)
        found[int(index)] = (succeeded, failed)
    return found


def throughput(
    conn: sa.Connection, slot_counts: SlotCounts, at: float, minutes: int = THROUGHPUT_MINUTES
) -> list[MinuteCount]:
    """Runs finished per minute over the ``minutes`` up to the one holding ``at``, from the
    ``finished_at`` index; the minutes that ended long ago as ``slot_counts`` counted them
    (see :class:`SlotCounts`), so that a busy store counts its newest minutes alone."""
    first = int(at // 60) - minutes + 1
    found = slot_counts.finishes(conn, first, at, 60.0)
    return [
        MinuteCount(minute=m * 60.0, succeeded=found[m][0], failed=found[m][1])
        for m in range(first, first + minutes)
    ]


def queue_history(
    conn: sa.Connection,
    slot_counts: SlotCounts,
    *,
    since: float,
    until: float,
    depth_at_count: int,
    counted_at: float,
    oldest_due_at: float | None,
    slots: int = SLOTS,
) -> list[QueuePoint]:
    """The queue's depth and oldest due age at each slot boundary from ``since`` to ``until``
    (about ``slots`` of them), oldest first; the last at ``counted_at`` when the window
    reaches it.

    ``depth_at_count`` is the number of queued and running runs counted at
    ``counted_at`` (the dashboard's latest count); the depth at each moment
    is derived from it as the module docstring says. The window is cut at
    ``counted_at``: the future has no depth yet. ``oldest_due_at`` is when the
    oldest due run queued now became due (the overview reads it, one seek per
    job), None if no queued run is due.
    """
    until = min(until, counted_at)
    width = _slot_width(since, until, slots)
    first = math.ceil(since / width)
    if until <= since or first * width > until:
        return []
    created = slot_counts.counts(conn, runs.c.created_at, first, counted_at, width)
    finished = slot_counts.counts(conn, runs.c.finished_at, first, counted_at, width)
    # change[slot]: runs created less runs finished from the slot's start to the count.
    change: dict[int, int] = {}
    running = 0
    for slot in range(int(counted_at // width), first - 1, -1):
        running += created.get(slot, 0) - finished.get(slot, 0)
        change[slot] = running
    moments = [(slot * width, change[slot]) for slot in range(first, int(until // width) + 1)]
    if until == counted_at:
        moments.append((counted_at, 0))
    waits = _waits(conn, since, until)
    if oldest_due_at is not None:  # queued now: it has waited from its due time on
        waits.append((oldest_due_at, math.inf))
    ages = _oldest_due_ages(waits, [moment for moment, _ in moments])
    return [
        QueuePoint(
            at=moment,
            depth=max(0, depth_at_count - changed),
            oldest_due_age=ages[moment],
        )
        for moment, changed in moments
    ]


def _waits(conn: sa.Connection, since: float, until: float) -> list[tuple[float, float]]:
    """When each run of an even sample of those created from ``CREATED_SLACK`` before
    ``since`` (by id, one primary-key read each) was due and waiting: ``(due, until)``."""
    first = first_created_since(conn, since - CREATED_SLACK)
    if first is None:
        return []
    newest = conn.scalar(sa.select(sa.func.max(runs.c.id))) or first
    step = max(1, math.ceil((newest - first + 1) / SAMPLE))
    rows = conn.execute(
        sa.select(
            runs.c.created_at,
            runs.c.available_at,
            runs.c.started_at,
            runs.c.finished_at,
            runs.c.status,
        ).where(id_among(conn, runs.c.id, range(first, newest + 1, step)))
    )
    waits = []
    for created_at, available_at, started_at, finished_at, status in rows:
        due = max(created_at, available_at)
        end = math.inf if finished_at is None else finished_at
        # A queued run's started_at is its previous attempt's: it waits again now.
        if started_at is not None and status != RunStatus.QUEUED.value:
            end = min(end, started_at)
        if due < end:
            waits.append((due, end))
    return waits


def _oldest_due_ages(
    waits: Sequence[tuple[float, float]], moments: Sequence[float]
) -> dict[float, float | None]:
    """``{moment: its age}``: how long the earliest wait that began at or before ``moment``
    and had not ended by it had lasted then (None: no run waited then).

    One sweep over the moments in order: the waits begun so far are kept in a
    heap by their start, and those ended by the moment are dropped from its
    top, for good (the moments only grow), so the top is the earliest wait
    going on. The sample's waits times the chart's moments, compared one by
    one, was the largest part of the overview at ten million runs.
    """
    begun = sorted(waits)
    going: list[tuple[float, float]] = []
    ages: dict[float, float | None] = {}
    next_wait = 0
    for moment in sorted(moments):
        while next_wait < len(begun) and begun[next_wait][0] <= moment:
            heapq.heappush(going, begun[next_wait])
            next_wait += 1
        while going and going[0][1] <= moment:
            heapq.heappop(going)
        ages[moment] = moment - going[0][0] if going else None
    return ages


def _quantile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def sensor_lag(
    conn: sa.Connection,
    sensor: str,
    *,
    interval: float | None,
    since: float,
    until: float,
    slots: int = SLOTS,
) -> list[LagSlot]:
    """How late the sensor's evaluations started, per slot: start minus (previous end plus
    ``interval``), from its newest ``MAX_EVALUATIONS`` through the ``(sensor, id)`` index.

    After a failed evaluation the next is due after a backoff instead, so it is
    left out. ``interval`` None (a push sensor): each evaluation's duration.
    """
    rows = conn.execute(
        sa.select(
            sensor_evaluations.c.outcome,
            sensor_evaluations.c.started_at,
            sensor_evaluations.c.finished_at,
        )
        .where(sensor_evaluations.c.sensor == sensor)
        .order_by(sensor_evaluations.c.id.desc())
        .limit(MAX_EVALUATIONS)
    ).all()
    width = _slot_width(since, until, slots)
    lags: dict[int, list[float]] = {}
    for position, newer in enumerate(rows):
        older = rows[position + 1] if position + 1 < len(rows) else None
        if not since <= newer.started_at < until:
            continue
        if interval is None:
            lag = newer.finished_at - newer.started_at
        elif older is None or older.outcome == EvaluationOutcome.FAILED.value:
            continue
        else:
            lag = max(0.0, newer.started_at - (older.finished_at + interval))
        lags.setdefault(int((newer.started_at - since) // width), []).append(lag)
    result = []
    for index in range(math.ceil((until - since) / width)):
        ordered = sorted(lags.get(index, []))
        result.append(
            LagSlot(
                start=since + index * width,
                evaluations=len(ordered),
                p50=_quantile(ordered, 0.5),
                max=ordered[-1] if ordered else None,
            )
        )
    return result
