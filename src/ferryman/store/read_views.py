"""Queries behind the dashboard's timeline, charts and sensor streaks (read-only).

Like :mod:`~ferryman.store.read_queries`, each walks an index from one end and
stops: the timeline reads at most ``MAX_BARS`` runs (newest finished first,
from the ``finished_at`` index) and their processing log (by ``run_id``);
past that many, it counts finishes per time slot instead of drawing each
attempt, up to ``SLOT_SAMPLE`` a slot, and estimates a fuller slot's.
Durations are read from about ``DURATION_SAMPLE`` succeeded runs created in
the window, a few from each of its id ranges, so a chart over a busy week
costs about what one over a quiet hour does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import (
    EvaluationOutcome,
    Run,
    RunEventKind,
    RunStatus,
    SensorKind,
    SensorState,
)
from ferryman.store import records
from ferryman.store.read_queries import id_among
from ferryman.store.run_rows import status_is
from ferryman.store.schema import run_events, runs, sensor_evaluations

MAX_BARS = 400  # attempts drawn one by one; past this the timeline is aggregated
DURATION_SAMPLE = 2000  # succeeded runs a duration chart is drawn from, spread over its window
CREATED_SLACK = 3600.0  # a run finishing in a window may have been created this long before
MAX_EVALUATIONS = 2000  # newest evaluations a sensor's chart is drawn from
STREAK_CAP = 1000  # failures in a row of a push sensor are counted up to this
SLOTS = 60  # time slots of an aggregated timeline or a duration chart
SLOT_SAMPLE = (
    25  # finishes read at each end of a slot of an aggregated timeline (see _finish_slots)
)
COUNTED_FINISHES = 8000  # SQLite counts a window's finishes up to this many, samples past it

# The events that end an attempt, and the outcome each gives its bar.
ATTEMPT_ENDS = {
    RunEventKind.SUCCEEDED.value: "succeeded",
    RunEventKind.FAILED.value: "failed",
    RunEventKind.DEAD.value: "dead",
    RunEventKind.RETRY_SCHEDULED.value: "retried",
    RunEventKind.LEASE_EXPIRED.value: "taken over",
    RunEventKind.REQUEUED.value: "requeued",
    RunEventKind.RELEASED.value: "released",
    RunEventKind.CANCELLED.value: "cancelled",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AttemptBar:
    """One attempt of a run: from its claim to the event that ended it."""

    run_id: int
    job: str
    run_key: str
    attempt: int
    worker_id: str | None
    start: float
    end: float | None  # None: still running
    outcome: str  # succeeded, failed, dead, retried, taken over, requeued, cancelled, running


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SlotCount:
    """Runs that finished in one slot of an aggregated timeline (``{"finished": n}``)."""

    start: float
    counts: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    """Attempts in a window (``bars``), or, when there are too many, finishes per slot."""

    since: float
    until: float
    bars: list[AttemptBar]
    slots: list[SlotCount]  # only when aggregated
    aggregated: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DurationSlot:
    """Run durations (claim to finish, seconds) of the runs that finished in one slot."""

    start: float
    runs: int
    p50: float | None
    p95: float | None
    p99: float | None


def push_failure_streaks(conn: sa.Connection, states: Sequence[SensorState]) -> list[SensorState]:
    """``states`` with each push sensor's failures in a row counted from its evaluations.

    Push evaluations never write the sensor's row (concurrent deliveries must
    not wait on one another), so its ``consecutive_failures`` stays 0: the
    streak is read from the newest evaluations instead, through the
    ``(sensor, id)`` index, up to ``STREAK_CAP``.
    """
    shown = []
    for state in states:
        if state.kind == SensorKind.PUSH:
            outcomes = conn.scalars(
                sa.select(sensor_evaluations.c.outcome)
                .where(sensor_evaluations.c.sensor == state.name)
                .order_by(sensor_evaluations.c.id.desc())
                .limit(STREAK_CAP)
            )
            streak = 0
            for outcome in outcomes:
                if outcome != EvaluationOutcome.FAILED.value:
                    break
                streak += 1
            state = dataclasses.replace(state, consecutive_failures=streak)
        shown.append(state)
    return shown


def _finished_in(since: float, until: float, job: str | None) -> sa.Select[Any]:
    query = sa.select(runs.c.id).where(runs.c.finished_at >= since, runs.c.finished_at < until)
    return query.where(runs.c.job == job) if job is not None else query


def timeline(
    conn: sa.Connection, *, since: float, until: float, job: str | None = None
) -> Timeline:
    """Every attempt of the runs finished in ``[since, until)`` or running now, claim to end.

    Runs are read newest finished first; when more than ``MAX_BARS`` finished
    in the window, finishes are counted per slot instead, or estimated where a
    slot holds more than ``SLOT_SAMPLE`` (see :func:`_finish_slots`).
    """
    finished: list[int] = list(
        conn.scalars(
            _finished_in(since, until, job).order_by(runs.c.finished_at.desc()).limit(MAX_BARS + 1)
        )
    )
    if len(finished) > MAX_BARS:
        return Timeline(
            since=since,
            until=until,
            bars=[],
            slots=_finish_slots(conn, since, until, job),
            aggregated=True,
        )
    running_query = sa.select(runs.c.id).where(status_is(RunStatus.RUNNING))
    if job is not None:
        running_query = running_query.where(runs.c.job == job)
    running: list[int] = list(
        conn.scalars(running_query.order_by(runs.c.id.desc()).limit(MAX_BARS))
    )
    return Timeline(
        since=since,
        until=until,
        bars=attempt_bars(conn, sorted(set(finished) | set(running))),
        slots=[],
        aggregated=False,
    )


def attempt_bars(conn: sa.Connection, run_ids: Sequence[int]) -> list[AttemptBar]:
    """The attempts of ``run_ids`` from their processing logs, oldest claim first."""
    if not run_ids:
        return []
    rows = conn.execute(
        sa.select(
            run_events.c.run_id,
            run_events.c.kind,
            run_events.c.at,
            run_events.c.attempt,
            run_events.c.worker_id,
            runs.c.job,
            runs.c.run_key,
            runs.c.status,
        )
        .join(runs, runs.c.id == run_events.c.run_id)
        .where(id_among(conn, run_events.c.run_id, run_ids))
        .order_by(run_events.c.run_id, run_events.c.id)
    )
    bars: list[AttemptBar] = []
    open_claims: dict[int, AttemptBar] = {}
    for row in rows:
        if row.kind == RunEventKind.CLAIMED.value:
            if row.run_id in open_claims:  # claimed again with no end logged: taken over
                taken = dataclasses.replace(open_claims[row.run_id], end=row.at)
                bars.append(dataclasses.replace(taken, outcome="taken over"))
            open_claims[row.run_id] = AttemptBar(
                run_id=row.run_id,
                job=row.job,
                run_key=row.run_key,
                attempt=row.attempt,
                worker_id=row.worker_id,
                start=row.at,
                end=None,
                outcome="running",
            )
            continue
        claim = open_claims.get(row.run_id)
        ended = ATTEMPT_ENDS.get(row.kind)
        if claim is not None and ended is not None:
            bars.append(dataclasses.replace(claim, end=row.at, outcome=ended))
            del open_claims[row.run_id]
    for claim in open_claims.values():  # still running, or its end is not logged yet
        bars.append(claim)
    return sorted(bars, key=lambda bar: (bar.start, bar.run_id))


def _slot(since: float, until: float, slots: int) -> float:
    return max(1.0, math.ceil((until - since) / slots))


def _finish_slots(
    conn: sa.Connection, since: float, until: float, job: str | None
) -> list[SlotCount]:
    """Runs finished per slot: counted in a slot with fewer than ``2 * SLOT_SAMPLE`` of
    them, estimated in a fuller one (``{"estimated": n}``).

    Counting every finish reads every entry of the window's ``finished_at``
    index (17,000 a day at a million runs a week, ten times that at ten
    million). Each slot reads its first and its last ``SLOT_SAMPLE`` entries
    instead (one statement, two bounded index walks per slot, see
    :func:`_ends_of_slots`). When the two meet, every finish of the slot was
    read and is counted. When they do not, the finishes between them are
    taken to come at the mean of the paces at either end: a burst at a slot's
    start followed by quiet (a batch that came in, then nothing) is not
    carried over the quiet part. With ``job``, those finishes' rows are read,
    and the job's share of them scales the estimate.

    SQLite counts every finish of every job instead while the window holds
    at most ``COUNTED_FINISHES`` (found by a walk that stops there): its
    index walk is in-process and cheaper than the sample's 120 walks (which
    cost about what counting 20,000 finishes does). Past that it samples
    too: counting every finish of a day took 72 ms at ten million runs over
    60 days (167,000 finishes), 4.7 ms at 100,000.
    """
    width = _slot(since, until, SLOTS)
    total = math.ceil((until - since) / width)
    if job is None and conn.dialect.name == "sqlite" and _few_finishes(conn, since, until):
        return _counted_slots(conn, since, until, width, total)
    counts: dict[int, dict[str, int]] = {}
    ends = _ends_of_slots(conn.dialect.name, since, until, width, total, job)
    for index, seen, mine, *both in conn.execute(_per_slot(ends)).all():
        if not mine:
            continue
        head, tail = (int(both[0]), *both[1:3]), (int(both[3]), *both[4:6])
        if seen < head[0] + tail[0] or head[0] < SLOT_SAMPLE:
            counts[int(index)] = {"finished": int(mine)}  # the ends met: every finish was read
            continue
        head_last, tail_first = float(head[2]), float(tail[1])
        paces = [(n - 1) / (b - a) if b > a else 0.0 for n, a, b in (head, tail)]
        # At a pace p, a gap of g seconds between two finishes holds about p * g - 1 more.
        between = max(0.0, tail_first - head_last) * sum(paces) / 2 - 1
        estimate = seen + max(0.0, between)
        counts[int(index)] = {"estimated": max(1, round(estimate * mine / seen))}
    return [SlotCount(start=since + i * width, counts=counts.get(i, {})) for i in range(total)]


def _few_finishes(conn: sa.Connection, since: float, until: float) -> bool:
    """Whether at most ``COUNTED_FINISHES`` runs finished in ``[since, until)``: a walk of
    the ``finished_at`` index that stops one past that many."""
    walk = _finished_in(since, until, None).limit(COUNTED_FINISHES + 1).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(walk)).scalar_one()) <= (
        COUNTED_FINISHES
    )


def _counted_slots(
    conn: sa.Connection, since: float, until: float, width: float, total: int
) -> list[SlotCount]:
    """Every finish of the window counted per slot, from the ``finished_at`` index alone."""
    slot = sa.func.floor((runs.c.finished_at - since) / width).label("slot")
    query = (
        sa.select(slot, sa.func.count())
        .where(runs.c.finished_at >= since, runs.c.finished_at < until)
        .group_by(slot)
    )
    counts = {int(index): int(count) for index, count in conn.execute(query)}
    return [
        SlotCount(start=since + i * width, counts={"finished": counts[i]} if i in counts else {})
        for i in range(total)
    ]


def _per_slot(ends: sa.CompoundSelect[Any]) -> sa.Select[Any]:
    """Per slot of ``ends``: ``slot``, the finishes seen, of them the job's, then the
    number, first and last finish time of each end (the database folds the rows it
    read, one row a slot, rather than sending them)."""
    read = ends.subquery()

    def end(last: int) -> list[sa.ColumnElement[Any]]:
        at = sa.case((read.c.last == last, read.c.finished_at))
        return [sa.func.count(at), sa.func.min(at), sa.func.max(at)]

    # Told apart by id, not by finish time: runs finished in one commit share it.
    mine = sa.case((read.c.of_job, read.c.id))
    return sa.select(
        read.c.slot,
        sa.func.count(read.c.id.distinct()),
        sa.func.count(mine.distinct()),
        *end(0),
        *end(1),
    ).group_by(read.c.slot)


def _ends_of_slots(
    dialect: str, since: float, until: float, width: float, total: int, job: str | None
) -> sa.CompoundSelect[Any]:
    """``(last, slot, id, finished_at, of job)`` of the first (``last`` 0) and the last
    (``last`` 1) ``SLOT_SAMPLE`` runs finished in each of ``total`` slots of ``width``
    seconds from ``since``: one statement on ``dialect``."""

    def end_of(index: Any, last: bool, table: sa.FromClause = runs) -> sa.Select[Any]:
        of_job = sa.true() if job is None else table.c.job == job
        low = since + index * width
        order = table.c.finished_at.desc() if last else table.c.finished_at
        return (
            sa.select(table.c.id, table.c.finished_at, of_job.label("of_job"))
            .where(
                table.c.finished_at >= low,
                table.c.finished_at < low + width,
                table.c.finished_at < until,
            )
            .order_by(order)
            .limit(SLOT_SAMPLE)
        )

    def one_end(last: bool) -> list[sa.Select[Any]]:
        marker = sa.literal(int(last)).label("last")
        if dialect == "postgresql":
            slots = sa.func.generate_series(0, total - 1).table_valued("slot").render_derived()
            part = end_of(slots.c.slot, last).lateral("part")
            columns = [part.c.id, part.c.finished_at, part.c.of_job]
            return [
                sa.select(marker, slots.c.slot, *columns).select_from(slots.join(part, sa.true()))
            ]
        if dialect == "sqlite":
            # No LATERAL: each slot's runs by a correlated subquery, the slots by a recursive CTE.
            start = sa.select(sa.literal(0).label("slot")).cte(f"slots{int(last)}", recursive=True)
            slots_cte = start.union_all(
                sa.select((start.c.slot + 1).label("slot")).where(start.c.slot + 1 < total)
            )
            sampled = runs.alias("sampled")
            ids = end_of(slots_cte.c.slot, last, sampled).with_only_columns(sampled.c.id)
            of_job = sa.true() if job is None else runs.c.job == job
            columns = [runs.c.id, runs.c.finished_at, of_job.label("of_job")]
            joined = slots_cte.join(runs, runs.c.id.in_(ids.correlate(slots_cte)))
            return [sa.select(marker, slots_cte.c.slot, *columns).select_from(joined)]
        # MariaDB takes neither LATERAL nor a LIMIT in an IN subquery: one arm per slot.
        arms = [end_of(sa.literal(index), last).subquery() for index in range(total)]
        return [
            sa.select(marker, sa.literal(index).label("slot"), *arm.c)
            for index, arm in enumerate(arms)
        ]

    return sa.union_all(*one_end(False), *one_end(True))


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def _id_bounds(conn: sa.Connection, since: float, until: float) -> tuple[int, int] | None:
    """The ids of the runs created in ``[since, until)``, as a range ``[first, past)``
    found by two seeks in the ``(created_at, id)`` index; None when none was created."""
    first = first_created_since(conn, since)
    if first is None:
        return None
    past = first_created_since(conn, until)
    if past is None:
        past = int(conn.scalar(sa.select(sa.func.max(runs.c.id))) or first) + 1
    return (first, past) if past > first else None


def _sampled_successes(
    conn: sa.Connection, job: str, since: float, until: float
) -> list[tuple[float, float]]:
    """``(finished_at, started_at)`` of about ``DURATION_SAMPLE`` of the job's succeeded runs
    created from ``CREATED_SLACK`` before ``since``, spread over them by id.

    The window's ids are cut into ``SLOTS`` equal ranges, and the first
    ``DURATION_SAMPLE / SLOTS`` of the job's succeeded runs in each are read
    from the ``(job, status, id)`` index: one seek and a bounded read per
    range, so a week of a busy store costs what an hour of a quiet one does.
    Counting the window's runs first, or keeping one id in k, reads every
    entry of the window: seconds at ten million runs.
    """
    bounds = _id_bounds(conn, since - CREATED_SLACK, until)
    if bounds is None:
        return []
    first, past = bounds
    step = max(1, math.ceil((past - first) / SLOTS))
    each = max(1, DURATION_SAMPLE // SLOTS)

    def succeeded_from(low: Any, table: sa.FromClause = runs) -> sa.Select[Any]:
        return (
            sa.select(table.c.finished_at, table.c.started_at)
            .where(
                table.c.job == job,
                table.c.status == RunStatus.SUCCEEDED.value,
                table.c.id >= low,
                table.c.id < low + step,
                table.c.id < past,
            )
            .order_by(table.c.id)
            .limit(each)
        )

    query = _one_query_per_range(conn.dialect.name, succeeded_from, first, past, step)
    return [
        (finished_at, started_at)
        for finished_at, started_at in conn.execute(query).all()
        if finished_at is not None and started_at is not None and since <= finished_at < until
    ]


def _one_query_per_range(
    dialect: str,
    succeeded_from: Callable[..., sa.Select[Any]],
    first: int,
    past: int,
    step: int,
) -> sa.Select[Any] | sa.CompoundSelect[Any]:
    """One statement reading ``succeeded_from(low)`` for each range of ids, on ``dialect``."""
    if dialect == "postgresql":
        lows = sa.func.generate_series(first, past - 1, step).table_valued("low").render_derived()
        part = succeeded_from(lows.c.low).lateral("sampled")
        return sa.select(part.c.finished_at, part.c.started_at).select_from(
            lows.join(part, sa.true())
        )
    if dialect == "sqlite":
        # No LATERAL: each range's ids by a correlated subquery, the ranges by a recursive CTE.
        start = sa.select(sa.literal(first).label("low")).cte("lows", recursive=True)
        lows_cte = start.union_all(
            sa.select((start.c.low + step).label("low")).where(start.c.low + step < past)
        )
        sampled = runs.alias("sampled")
        ids = succeeded_from(lows_cte.c.low, sampled).with_only_columns(sampled.c.id)
        return sa.select(runs.c.finished_at, runs.c.started_at).select_from(
            lows_cte.join(runs, runs.c.id.in_(ids.correlate(lows_cte)))
        )
    # MariaDB takes neither LATERAL nor a LIMIT in an IN subquery. Each arm a
    # subquery: a member of a compound SELECT takes no LIMIT of its own elsewhere.
    arms = [succeeded_from(low).subquery() for low in range(first, past, step)]
    return sa.union_all(*(sa.select(arm) for arm in arms))


def durations(
    conn: sa.Connection, *, job: str, since: float, until: float, slots: int = SLOTS
) -> list[DurationSlot]:
    """p50/p95/p99 of the durations (claim to finish) of the job's succeeded runs per slot,
    from an even sample of about ``DURATION_SAMPLE`` of them (see :func:`_sampled_successes`)."""
    rows = _sampled_successes(conn, job, since, until)
    width = _slot(since, until, slots)
    by_slot: dict[int, list[float]] = {}
    for finished_at, started_at in rows:
        by_slot.setdefault(int((finished_at - since) // width), []).append(
            max(0.0, finished_at - started_at)
        )
    result = []
    for index in range(math.ceil((until - since) / width)):
        ordered = sorted(by_slot.get(index, []))
        result.append(
            DurationSlot(
                start=since + index * width,
                runs=len(ordered),
                p50=_percentile(ordered, 0.50),
                p95=_percentile(ordered, 0.95),
                p99=_percentile(ordered, 0.99),
            )
        )
    return result


def runs_by_id(conn: sa.Connection, run_ids: Sequence[int]) -> list[Run]:
    """The runs of ``run_ids`` that exist, in the order asked (a pruned one is left out)."""
    if not run_ids:
        return []
    rows = conn.execute(sa.select(runs).where(id_among(conn, runs.c.id, run_ids))).mappings()
    found = {run.id: run for run in (records.run_from_row(row) for row in rows)}
    return [found[run_id] for run_id in run_ids if run_id in found]


def last_outcomes(conn: sa.Connection, names: Sequence[str]) -> dict[str, EvaluationOutcome]:
    """The outcome of each named sensor's newest evaluation: one seek per sensor."""
    outcomes = {}
    for name in names:
        outcome = conn.scalar(
            sa.select(sensor_evaluations.c.outcome)
            .where(sensor_evaluations.c.sensor == name)
            .order_by(sensor_evaluations.c.id.desc())
            .limit(1)
        )
        if outcome is not None:
            outcomes[name] = EvaluationOutcome(outcome)
    return outcomes


def evaluation_slots(
    conn: sa.Connection, sensor: str, *, since: float, until: float, slots: int = SLOTS
) -> list[SlotCount]:
    """The sensor's evaluations per slot by outcome, from its newest ``MAX_EVALUATIONS``
    (read from the ``(sensor, id)`` index, newest first)."""
    rows = conn.execute(
        sa.select(sensor_evaluations.c.outcome, sensor_evaluations.c.finished_at)
        .where(sensor_evaluations.c.sensor == sensor)
        .order_by(sensor_evaluations.c.id.desc())
        .limit(MAX_EVALUATIONS)
    )
    width = _slot(since, until, slots)
    counts: dict[int, dict[str, int]] = {}
    for outcome, finished_at in rows:
        if since <= finished_at < until:
            by_outcome = counts.setdefault(int((finished_at - since) // width), {})
            by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
    total = math.ceil((until - since) / width)
    return [SlotCount(start=since + i * width, counts=counts.get(i, {})) for i in range(total)]


def first_created_since(conn: sa.Connection, moment: float) -> int | None:
    """The id of the first run created at ``moment`` or later, by a seek in the
    ``(created_at, id)`` index (min(id) with the same condition walks the table on
    SQLite); None if there is none."""
    first = conn.scalar(
        sa.select(runs.c.id)
        .where(runs.c.created_at >= moment)
        .order_by(runs.c.created_at, runs.c.id)
        .limit(1)
    )
    return None if first is None else int(first)
