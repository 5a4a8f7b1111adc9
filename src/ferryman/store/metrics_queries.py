"""Aggregates for ``/metrics``, computed in the database.

Counters come from the append-only tables (the processing log and the
evaluation history) and are folded in by id: each call reads only the rows
after the highest id already counted, through the primary key, so a scrape
costs the same on the millionth run as on the first. Gauges (runs by status,
the oldest due run, transfers) are read whole each time, from indexes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa

from ferryman.model import RunEventKind, TransferStatus
from ferryman.store.schema import run_events, runs, sensor_evaluations, transfers

# Upper bounds, in seconds, of the duration histograms (Prometheus' le labels).
DURATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)
FINISHING_KINDS = (RunEventKind.SUCCEEDED, RunEventKind.FAILED, RunEventKind.DEAD)
FOLD_CHUNK = 200_000  # log rows per query, so that a first fold of a big store stays bounded


@dataclasses.dataclass(slots=True)
class Histogram:
    """Counts per bucket (not cumulative), their total and the sum of the observations."""

    buckets: list[int] = dataclasses.field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total: float = 0.0

    def add(self, buckets: Sequence[int], count: int, total: float) -> None:
        for index, value in enumerate(buckets):
            self.buckets[index] += int(value or 0)
        self.count += count
        self.total += total


@dataclasses.dataclass(slots=True)
class Folded:
    """What the log and the evaluation history held up to the watermarks."""

    event_watermark: int = 0
    evaluation_watermark: int = 0
    events: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)  # job, kind
    run_durations: dict[str, Histogram] = dataclasses.field(default_factory=dict)  # by job
    evaluations: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    evaluation_durations: dict[str, Histogram] = dataclasses.field(default_factory=dict)


def _bucket_columns(duration: sa.ColumnElement[float]) -> list[sa.ColumnElement[int]]:
    """Observations per bucket, not cumulative; the first bucket has no lower bound,
    so that the cumulative counts never miss an observation the count has."""
    lower = (None, *DURATION_BUCKETS[:-1])
    return [
        sa.func.sum(
            sa.case(
                (
                    duration <= bound
                    if low is None
                    else sa.and_(duration > low, duration <= bound),
                    1,
                ),
                else_=0,
            )
        )
        for low, bound in zip(lower, DURATION_BUCKETS, strict=True)
    ]


def _settled_high(
    conn: sa.Connection, ident: sa.Column[int], at: sa.Column[float], low: int, cutoff: float
) -> int | None:
    """The highest id after ``low`` of rows written before ``cutoff``.

    On PostgreSQL ids are handed out at insert and committed in any order:
    a row with a lower id may still be on its way. Rows are folded only once
    they are ``settle_seconds`` old, so the watermark does not pass one by.
    """
    query = sa.select(sa.func.max(ident)).where(ident > low, at <= cutoff)
    high = conn.execute(query).scalar()
    return None if high is None else int(high)


def fold_events(conn: sa.Connection, folded: Folded, cutoff: float) -> None:
    """Count log rows after ``folded.event_watermark``: by job and kind, durations of finishes.

    A finish is timed from the ``claimed`` row of its own attempt, found by
    the lease token both carry (every claim takes a new token). Not from the
    run's ``started_at``: that is the start of the run's *latest* attempt, so
    after a retry by hand it lies after the earlier finishes, whose durations
    came out negative. A run that died because its lease expired on the last
    attempt is counted but not timed: its attempt ended unseen. Durations are
    never negative, even if the database's clock stepped back.
    """
    high = _settled_high(conn, run_events.c.id, run_events.c.at, folded.event_watermark, cutoff)
    if high is None:
        return
    claim = run_events.alias("claim")
    finishing = [k.value for k in FINISHING_KINDS]
    elapsed = run_events.c.at - claim.c.at
    duration = sa.case((elapsed < 0, 0.0), else_=elapsed)
    timed = sa.case((run_events.c.kind.in_(finishing), duration), else_=None)
    own_claim = sa.and_(
        claim.c.run_id == run_events.c.run_id,
        claim.c.lease_token == run_events.c.lease_token,
        claim.c.kind == RunEventKind.CLAIMED.value,
        run_events.c.kind.in_(finishing),
    )
    while folded.event_watermark < high:
        low, upper = folded.event_watermark, min(high, folded.event_watermark + FOLD_CHUNK)
        query = (
            sa.select(
                runs.c.job,
                run_events.c.kind,
                sa.func.count(),
                sa.func.count(timed),
                sa.func.coalesce(sa.func.sum(timed), 0.0),
                *_bucket_columns(timed),
            )
            .select_from(
                run_events.join(runs, runs.c.id == run_events.c.run_id).outerjoin(claim, own_claim)
            )
            .where(run_events.c.id > low, run_events.c.id <= upper)
            .group_by(runs.c.job, run_events.c.kind)
        )
        for job, kind, count, timed_count, total, *buckets in conn.execute(query):
            folded.events[(job, kind)] = folded.events.get((job, kind), 0) + int(count)
            if timed_count:
                folded.run_durations.setdefault(job, Histogram()).add(
                    buckets, int(timed_count), float(total)
                )
        folded.event_watermark = upper


def fold_evaluations(conn: sa.Connection, folded: Folded, cutoff: float) -> None:
    """Count evaluations after ``folded.evaluation_watermark`` by sensor and outcome."""
    high = _settled_high(
        conn,
        sensor_evaluations.c.id,
        sensor_evaluations.c.finished_at,
        folded.evaluation_watermark,
        cutoff,
    )
    if high is None:
        return
    duration = sensor_evaluations.c.finished_at - sensor_evaluations.c.started_at
    while folded.evaluation_watermark < high:
        low = folded.evaluation_watermark
        upper = min(high, low + FOLD_CHUNK)
        query = (
            sa.select(
                sensor_evaluations.c.sensor,
                sensor_evaluations.c.outcome,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(duration), 0.0),
                *_bucket_columns(duration),
            )
            .where(sensor_evaluations.c.id > low, sensor_evaluations.c.id <= upper)
            .group_by(sensor_evaluations.c.sensor, sensor_evaluations.c.outcome)
        )
        for sensor, outcome, count, total, *buckets in conn.execute(query):
            key = (sensor, outcome)
            folded.evaluations[key] = folded.evaluations.get(key, 0) + int(count)
            folded.evaluation_durations.setdefault(sensor, Histogram()).add(
                buckets, int(count), float(total)
            )
        folded.evaluation_watermark = upper


@dataclasses.dataclass(frozen=True, slots=True)
class TransferTotals:
    transfers: int
    bytes_confirmed: int
    parts_confirmed: int


def transfer_totals(conn: sa.Connection) -> dict[TransferStatus, TransferTotals]:
    rows = conn.execute(
        sa.select(
            transfers.c.status,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(transfers.c.bytes_confirmed), 0),
            sa.func.coalesce(sa.func.sum(transfers.c.parts_confirmed), 0),
        ).group_by(transfers.c.status)
    )
    return {
        TransferStatus(status): TransferTotals(int(count), int(size), int(parts))
        for status, count, size, parts in rows
    }
