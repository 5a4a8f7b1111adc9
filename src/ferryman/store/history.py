"""The queue's and the sensors' past, derived from what the store keeps (read-only).

No table records the queue's depth over time; it follows from the runs' own
times. The runs not finished at a moment ``t`` are those not finished now,
less the ones created since ``t``, plus the ones that finished since ``t``::

    depth(t) = depth(now) - created(t..now) + finished(t..now)

Both terms are counted per time slot by one grouped aggregate each, on the
``created_at`` and ``finished_at`` indexes alone (never the runs' rows), so a
chart costs the number of runs created and finished in its window, and is
exact: a run retried since (its ``finished_at`` cleared) counts as not
finished then either, a run pruned since was created and finished inside the
window or before it.

The age of the oldest due run at ``t`` is read from an even sample of the
runs created in the window (``SAMPLE`` of them, spread by id, each read by its
primary key) and the oldest runs queued now: a run waited at ``t`` if it was
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
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import EvaluationOutcome, RunStatus
from ferryman.store.schema import runs, sensor_evaluations

SLOTS = 60  # points of a chart
SAMPLE = 2000  # runs the oldest-due age is read from, spread over the window by id
CREATED_SLACK = 3600.0  # a run due in the window may have been created this long before it
OLDEST_QUEUED = 50  # the oldest runs queued now, read by the (status, id) index
MAX_EVALUATIONS = 2000  # newest evaluations a sensor's lag is read from


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


def _counts_back(
    conn: sa.Connection,
    column: sa.ColumnElement[Any],
    since: float,
    until: float,
    up_to: float,
    width: float,
) -> dict[int, int]:
    """Rows with ``since <= column < up_to`` counted per slot of ``width`` seconds counted
    back from ``until``: slot ``j`` holds ``(until - (j+1) * width, until - j * width]``,
    every row at or after ``until`` falls in a negative slot."""
    slot = sa.func.floor((until - column) / width).label("slot")
    query = (
        sa.select(slot, sa.func.count())
        .select_from(runs)
        .where(column >= since, column < up_to)
        .group_by(slot)
    )
    return {int(index): int(count) for index, count in conn.execute(query)}


def queue_history(
    conn: sa.Connection,
    *,
    since: float,
    until: float,
    depth_at_count: int,
    counted_at: float,
    slots: int = SLOTS,
) -> list[QueuePoint]:
    """The queue's depth and oldest due age at moments ``until - j * width`` back to ``since``
    (about ``slots`` of them), oldest first.

    ``depth_at_count`` is the number of queued and running runs counted at
    ``counted_at`` (the dashboard's latest count); the depth at each moment
    is derived from it as the module docstring says. The window is cut at
    ``counted_at``: the future has no depth yet.
    """
    until = min(until, counted_at)
    if until <= since:
        return []
    width = _slot_width(since, until, slots)
    steps = int((until - since) // width)
    created = _counts_back(conn, runs.c.created_at, since, until, counted_at, width)
    finished = _counts_back(conn, runs.c.finished_at, since, until, counted_at, width)
    # change[j]: runs created less runs finished after moment j (until - j * width).
    after = sum(n for j, n in created.items() if j < 0) - sum(
        n for j, n in finished.items() if j < 0
    )
    change = [after]
    for j in range(steps):
        change.append(change[-1] + created.get(j, 0) - finished.get(j, 0))
    waiting = _waiting_runs(conn, since, until)
    points = []
    for j in range(steps, -1, -1):
        moment = until - j * width
        points.append(
            QueuePoint(
                at=moment,
                depth=max(0, depth_at_count - change[j]),
                oldest_due_age=_oldest_due_age(waiting, moment),
            )
        )
    return points


def _waiting_runs(conn: sa.Connection, since: float, until: float) -> list[Any]:
    """An even sample of the runs created from ``CREATED_SLACK`` before ``since`` (by id, one
    primary-key read each) and the oldest runs queued now."""
    first = conn.scalar(
        sa.select(runs.c.id)
        .where(runs.c.created_at >= since - CREATED_SLACK)
        .order_by(runs.c.created_at, runs.c.id)
        .limit(1)
    )
    columns = (
        runs.c.created_at,
        runs.c.available_at,
        runs.c.started_at,
        runs.c.finished_at,
        runs.c.status,
    )
    found: list[Any] = []
    if first is not None:
        newest = conn.scalar(sa.select(sa.func.max(runs.c.id))) or first
        step = max(1, math.ceil((newest - first + 1) / SAMPLE))
        ids = list(range(first, newest + 1, step))
        found += conn.execute(sa.select(*columns).where(runs.c.id.in_(ids))).all()
    oldest = (
        sa.select(runs.c.id)
        .where(runs.c.status == RunStatus.QUEUED.value, runs.c.available_at < until)
        .order_by(runs.c.id)
        .limit(OLDEST_QUEUED)
    )
    found += conn.execute(sa.select(*columns).where(runs.c.id.in_(oldest.scalar_subquery()))).all()
    return found


def _oldest_due_age(waiting: Sequence[Any], moment: float) -> float | None:
    due = [
        row.available_at
        for row in waiting
        if row.created_at <= moment
        and row.available_at <= moment
        and (row.started_at is None or row.started_at > moment or row.status == "queued")
        and (row.finished_at is None or row.finished_at > moment)
    ]
    return moment - min(due) if due else None


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
    for newer, older in zip(rows, [*rows[1:], None], strict=True):
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
