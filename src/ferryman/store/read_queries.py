"""The queries behind the read model (:mod:`ferryman.store.read_model`).

Read-only, for the HTTP API, the dashboard and ``/metrics``. Every list is
paged by keyset (``before_id``, newest first), so a page costs the same on
the millionth run as on the first: each query walks an index from one end
and stops after ``limit`` rows. Counts come from the ``(job, status, id)``
index, never from a scan of the runs themselves.

The ``/metrics`` counters are folded in from the append-only processing log
and evaluation history by id: each call reads only the rows after the
highest id already counted, through the primary key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ferryman.model import (
    Evaluation,
    EvaluationOutcome,
    RunEventKind,
    RunStatus,
    Transfer,
    TransferStatus,
)
from ferryman.store import records
from ferryman.store.schema import run_events, runs, sensor_evaluations, transfers

T = TypeVar("T")

MAX_PAGE = 500
THROUGHPUT_MINUTES = 60
DEAD_LETTER_SAMPLE = 2000  # newest failed and dead runs grouped on the dead-letter page
MAX_GROUPS = 100
ERROR_TAIL = 400  # characters read from the end of each error: its last line is in there
ERROR_LINE = 300  # characters of an error's line that name its group (as logs.error_summary)
_DIGITS = re.compile(r"\d+")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Page(Generic[T]):
    """One page, newest first; ``next_before`` is the ``before_id`` of the next page."""

    items: list[T]
    next_before: int | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MinuteCount:
    """Runs that finished in one minute (``minute`` is its start, seconds since the epoch)."""

    minute: float
    succeeded: int
    failed: int  # failed or dead


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ErrorGroup:
    """Failed or dead runs of one job that ended with the same error line."""

    job: str
    status: RunStatus
    error: str  # the last line of the error, numbers shown as N
    count: int
    newest_run_id: int
    run_ids: list[int]  # newest first, at most 100
    first_seen: datetime | None
    last_seen: datetime | None


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


def _page(items: list[T], limit: int, ident: int | None) -> Page[T]:
    """``items`` were fetched with ``limit + 1``: one more tells whether a next page exists."""
    if len(items) > limit:
        return Page(items=items[:limit], next_before=ident)
    return Page(items=items, next_before=None)


# -- runs ----------------------------------------------------------------------


def _job_names_cte() -> Any:
    """Every job that has runs, by a loose index scan (see :func:`job_names`)."""
    first = sa.select(sa.func.min(runs.c.job).label("job"))
    names = first.cte("job_names", recursive=True)
    following = sa.select(sa.func.min(runs.c.job)).where(runs.c.job > names.c.job).scalar_subquery()
    return names.union_all(sa.select(following.label("job")).where(names.c.job.is_not(None)))


def job_names(conn: sa.Connection) -> list[str]:
    """Every job that has runs, in the database's order; cheap however many runs there are.

    A loose index scan: a recursive query asks the ``(job, status, id)`` index
    for the first job name, then for the first one after it, and so on, so it
    reads one index entry per job instead of every run (a ``DISTINCT`` or
    ``GROUP BY`` reads them all, on PostgreSQL and on SQLite alike).
    """
    names = _job_names_cte()
    query = sa.select(names.c.job).where(names.c.job.is_not(None))
    return [job for (job,) in conn.execute(query)]


def oldest_due_age(conn: sa.Connection, at: float) -> dict[str, float]:
    """Seconds the oldest due queued run of each job has waited.

    Seeks in the claim index (``job, priority DESC, available_at`` over queued
    runs), however many runs are queued: the priorities each job has queued
    runs of, by a loose index scan from the highest (see :func:`job_names`),
    then the oldest due run of each. A GROUP BY, or a minimum over a job's
    entries, would read them all: the priority comes before the due time.
    """
    names = _job_names_cte()
    queued = runs.c.status == RunStatus.QUEUED.value
    top = sa.select(sa.func.max(runs.c.priority)).where(runs.c.job == names.c.job, queued)
    pairs = (
        sa.select(names.c.job.label("job"), top.scalar_subquery().label("priority"))
        .where(names.c.job.is_not(None))
        .cte("due_priorities", recursive=True)
    )
    other = runs.alias("lower_priority")
    lower = sa.select(sa.func.max(other.c.priority)).where(
        other.c.job == pairs.c.job,
        other.c.status == RunStatus.QUEUED.value,
        other.c.priority < pairs.c.priority,
    )
    pairs = pairs.union_all(
        sa.select(pairs.c.job, lower.scalar_subquery()).where(pairs.c.priority.is_not(None))
    )
    oldest = (
        sa.select(sa.func.min(runs.c.available_at))
        .where(
            runs.c.job == pairs.c.job,
            queued,
            runs.c.priority == pairs.c.priority,
            runs.c.available_at <= at,
        )
        .scalar_subquery()
    )
    query = (
        sa.select(pairs.c.job, sa.func.min(oldest))
        .where(pairs.c.priority.is_not(None))
        .group_by(pairs.c.job)
    )
    return {job: max(0.0, at - first) for job, first in conn.execute(query) if first is not None}


def id_among(
    conn: sa.Connection, column: sa.ColumnElement[int], ids: Iterable[int]
) -> sa.ColumnElement[bool]:
    """``column IN ids``, the ids bound as one parameter where the store allows it.

    An ``IN`` list binds one parameter per id: for the 2,000 ids of a
    dead-letter sample, rendering that statement and parsing it (SQLAlchemy
    and psycopg, in Python) took longer than PostgreSQL took to answer it
    (about 80 ms against 12 at a million runs). The plan is the same: the
    primary key probed for each id. SQLite reads them from one JSON array.
    """
    listed = list(ids)
    if conn.dialect.name == "postgresql":
        array = sa.bindparam(None, listed, type_=postgresql.ARRAY(sa.BigInteger()))
        return column == sa.any_(array)
    if conn.dialect.name == "sqlite":  # one JSON text parameter, read by json_each
        values = sa.func.json_each(sa.bindparam(None, json.dumps(listed), type_=sa.Text()))
        return column.in_(sa.select(sa.column("value")).select_from(values))
    return column.in_(listed)


def error_kind(error: str | None) -> str:
    """The error's line with its numbers as ``N``: errors that differ only in an id group.

    The line is :func:`ferryman.logs.error_summary`'s (the last that is not
    blank), found from the end: the dead-letter page groups 2,000 errors.
    """
    for line in reversed((error or "").splitlines()):
        stripped = line.strip()
        if stripped:
            return _DIGITS.sub("N", stripped[:ERROR_LINE])
    return "(no error recorded)"


def newest_ended(conn: sa.Connection, *, job: str | None, sample: int) -> list[int]:
    """The ids of the newest ``sample`` failed and dead runs (of ``job``), newest first.

    One walk of the ``(job, status, id)`` or ``(status, id)`` index per status,
    merged here: ``status IN (...) AND job = ? ORDER BY id DESC`` has SQLite
    scan the table backwards instead, filtering every run on the way.
    """
    ids: list[int] = []
    for status in (RunStatus.FAILED.value, RunStatus.DEAD.value):
        query = sa.select(runs.c.id).where(runs.c.status == status)
        if job is not None:
            query = query.where(runs.c.job == job)
        ids += conn.scalars(query.order_by(runs.c.id.desc()).limit(sample)).all()
    return sorted(ids, reverse=True)[:sample]


def dead_letters(
    conn: sa.Connection, *, job: str | None = None, sample: int = DEAD_LETTER_SAMPLE
) -> list[ErrorGroup]:
    """Failed and dead runs grouped by job, status and error line, largest group first.

    Error lines that differ only in their numbers (an id, a line number) group
    together; at most ``MAX_GROUPS`` groups are returned.

    Groups are built from the newest ``sample`` failed and dead runs (read from
    the ``(status, id)`` index), so the page stays fast however many there are.
    """
    # Only the end of each error is read: tracebacks are long, their last line is what groups.
    length = sa.func.length(runs.c.last_error)
    tail = sa.func.substr(
        runs.c.last_error, sa.case((length > ERROR_TAIL, length - ERROR_TAIL + 1), else_=1)
    )
    query = (
        sa.select(
            runs.c.id, runs.c.job, runs.c.status, tail.label("last_error"), runs.c.finished_at
        )
        .where(runs.c.status.in_([RunStatus.FAILED.value, RunStatus.DEAD.value]))
        .order_by(runs.c.id.desc())
        .limit(sample)
    )
    # A walk of the table backwards would pass every run that did not fail on
    # the way (16 in 17 at a million runs; one job's failures are sparser still).
    # The ids come from walks of the (status, id) or (job, status, id) index,
    # then the rows by id.
    query = query.where(id_among(conn, runs.c.id, newest_ended(conn, job=job, sample=sample)))
    groups: dict[tuple[str, str, str], list[tuple[int, float | None]]] = {}
    for run_id, job_name, status, last_error, finished_at in conn.execute(query).all():
        key = (job_name, status, error_kind(last_error))
        groups.setdefault(key, []).append((run_id, finished_at))
    result = []
    for (job_name, status, error), rows in groups.items():
        finished = [at for _, at in rows if at is not None]
        result.append(
            ErrorGroup(
                job=job_name,
                status=RunStatus(status),
                error=error,
                count=len(rows),
                newest_run_id=rows[0][0],
                run_ids=[run_id for run_id, _ in rows[:100]],
                first_seen=records.to_datetime(min(finished)) if finished else None,
                last_seen=records.to_datetime(max(finished)) if finished else None,
            )
        )
    return sorted(result, key=lambda g: (-g.count, -g.newest_run_id))[:MAX_GROUPS]


# -- sensors -------------------------------------------------------------------


def list_evaluations(
    conn: sa.Connection,
    name: str,
    *,
    outcome: EvaluationOutcome | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Page[Evaluation]:
    """A sensor's evaluations, newest first."""
    limit = _limit(limit)
    query = (
        sa.select(sensor_evaluations)
        .where(sensor_evaluations.c.sensor == name)
        .order_by(sensor_evaluations.c.id.desc())
        .limit(limit + 1)
    )
    if outcome is not None:
        query = query.where(sensor_evaluations.c.outcome == EvaluationOutcome(outcome).value)
    if before_id is not None:
        query = query.where(sensor_evaluations.c.id < before_id)
    items = [records.evaluation_from_row(row) for row in conn.execute(query).mappings()]
    return _page(items, limit, items[limit - 1].id if len(items) > limit else None)


def cursor_history(conn: sa.Connection, name: str, limit: int = 50) -> list[Evaluation]:
    """The newest evaluations that moved the sensor's cursor, newest first."""
    query = (
        sa.select(sensor_evaluations)
        .where(
            sensor_evaluations.c.sensor == name,
            sensor_evaluations.c.state_version_after.is_not(None),
            sa.or_(
                sensor_evaluations.c.cursor_after != sensor_evaluations.c.cursor_before,
                sensor_evaluations.c.cursor_before.is_(None)
                != sensor_evaluations.c.cursor_after.is_(None),
            ),
        )
        .order_by(sensor_evaluations.c.id.desc())
        .limit(_limit(limit))
    )
    return [records.evaluation_from_row(row) for row in conn.execute(query).mappings()]


# -- transfers and workers -----------------------------------------------------


def list_transfers(
    conn: sa.Connection,
    *,
    status: TransferStatus | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Page[Transfer]:
    limit = _limit(limit)
    query = sa.select(transfers).order_by(transfers.c.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(transfers.c.status == TransferStatus(status).value)
    if before_id is not None:
        query = query.where(transfers.c.id < before_id)
    items = [records.transfer_from_row(row) for row in conn.execute(query).mappings()]
    return _page(items, limit, items[limit - 1].id if len(items) > limit else None)


def count_active_transfers(conn: sa.Connection) -> int:
    query = sa.select(sa.func.count()).where(transfers.c.status == TransferStatus.ACTIVE.value)
    return int(conn.execute(query).scalar_one())


# -- /metrics: gauges read whole, counters folded in by id ----------------------

# Upper bounds, in seconds, of the duration histograms (Prometheus' le labels).
# fmt: off
DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)
# fmt: on
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
