"""Runs by job and status, carried forward from the processing log instead of recounted.

Counting every run by job and status walks the whole ``(job, status, id)``
index: seconds at ten million runs. A :class:`RunTally` is such a count
together with the last processing-log id and the last run id it includes, so
that the next one is the last plus what changed since: the runs created after
it, counted as they are now, and the older runs named by the log rows written
after it, each moved from the status it had then to the one it has now.

* New runs are found by id, above the tally's run id: a plain submit writes
  no log row (the run row says all a ``requested`` row would).
* The status an older run had when the tally was taken is the one its newest
  log row up to the tally's log id leads to (:data:`STATUS_AFTER`); a run
  with no such row had none (it was queued, seeded in bulk, or pruned: a
  pruned run is finished and never moves again), in which case its first
  newer row says where it was (a claim takes a queued run, a cancellation
  names the status it cancelled).
* The current statuses and the log are read in one snapshot (repeatable
  read), so the tally is exact at the moment it was read. Where ids are
  handed out at insert and committed in any order (PostgreSQL, MariaDB), a
  row with an id below the tally's may still be on its way: the ids missing
  below it are kept (``pending``, log ids; ``runs_pending``, ranges of run
  ids, since a deduplicated insert burns ids in runs) and read again next
  time, until they appear or are ``PENDING_SECONDS`` old (a rolled-back or
  deduplicated insert never appears).
* Nothing is written on the claim or finish path: the tally costs only its
  reader, and it is saved now and then (:mod:`~ferryman.store.read_snapshots`) so
  that a restarted server carries it forward rather than counting again.

When more runs moved than a count would read, or a run moved in a way the
log does not explain, or (SQLite) the log row at the tally's id was pruned
and its id may be handed out again, or the tally was saved without a run id
(by an older version), it counts again. (Runs are never deleted, so a run id
is never handed out twice.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import RunEventKind, RunStatus
from ferryman.store import read_snapshots
from ferryman.store.read_queries import id_among
from ferryman.store.schema import run_events, runs

SNAPSHOT = "run_counts"  # its row in ferryman_read_snapshots
PENDING_WINDOW = 10_000  # ids below the newest that a full count checks for rows on their way
PENDING_SECONDS = 600.0  # a missing id older than this was rolled back, not delayed
MOVED_SHARE = 0.2  # more runs moved than this share of the store: count again
CHUNK = 1000  # run ids per query

# The status a run has after each kind of log row; the others leave it as it was.
STATUS_AFTER = {
    RunEventKind.REQUESTED.value: RunStatus.QUEUED,
    RunEventKind.CLAIMED.value: RunStatus.RUNNING,
    RunEventKind.SUCCEEDED.value: RunStatus.SUCCEEDED,
    RunEventKind.RETRY_SCHEDULED.value: RunStatus.QUEUED,
    RunEventKind.FAILED.value: RunStatus.FAILED,
    RunEventKind.DEAD.value: RunStatus.DEAD,
    RunEventKind.LEASE_EXPIRED.value: RunStatus.QUEUED,
    RunEventKind.RELEASED.value: RunStatus.QUEUED,
    RunEventKind.REQUEUED.value: RunStatus.QUEUED,
    RunEventKind.CANCELLED.value: RunStatus.CANCELLED,
}

Counts = dict[str, dict[RunStatus, int]]


class Unexplained(Exception):
    """A run moved in a way its log does not explain: count again."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunTally:
    """Runs by job and status as of log id ``event_id`` and run id ``run_id`` (less
    ``pending`` and ``runs_pending``), read at ``at``."""

    counts: Counts
    at: float  # the database's clock when it was read
    event_id: int | None = None  # every log row up to it is included but pending; None: unknown
    pending: tuple[tuple[int, float], ...] = ()  # (id, when first missed) below event_id
    run_id: int | None = None  # every run up to it is included but runs_pending; None: unknown
    # (first id, last id, when first missed): run ids missing at or below run_id
    runs_pending: tuple[tuple[int, int, float], ...] = ()

    def to_json(self) -> str:
        counts = {job: {s.value: n for s, n in by.items()} for job, by in self.counts.items()}
        body = {
            "counts": counts,
            "pending": self.pending,
            "run_id": self.run_id,
            "runs_pending": self.runs_pending,
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_row(cls, event_id: int, body: str, taken_at: float) -> RunTally:
        loaded = json.loads(body)
        counts = {
            job: {RunStatus(s): int(n) for s, n in by.items()}
            for job, by in loaded["counts"].items()
        }
        pending = tuple((int(i), float(t)) for i, t in loaded["pending"])
        run_id = loaded.get("run_id")  # absent from a tally saved by an older version
        runs_pending = tuple(
            (int(lo), int(hi), float(t)) for lo, hi, t in loaded.get("runs_pending", ())
        )
        return cls(
            counts=counts,
            at=taken_at,
            event_id=event_id,
            pending=pending,
            run_id=None if run_id is None else int(run_id),
            runs_pending=runs_pending,
        )


def count(conn: sa.Connection, at: float, counted: Counts) -> RunTally:
    """A tally from ``counted`` (every run counted in this snapshot), the log's newest id
    and the newest run id."""
    high = int(conn.scalar(sa.select(sa.func.max(run_events.c.id))) or 0)
    low = max(0, high - PENDING_WINDOW)
    ids = run_events.c.id
    present = set(conn.scalars(sa.select(ids).where(ids > low, ids <= high)))
    pending = tuple((i, at) for i in range(low + 1, high + 1) if i not in present)
    run_high = int(conn.scalar(sa.select(sa.func.max(runs.c.id))) or 0)
    run_low = max(0, run_high - PENDING_WINDOW)
    run_ids = sorted(conn.scalars(sa.select(runs.c.id).where(runs.c.id > run_low)))
    runs_pending = tuple((lo, hi, at) for lo, hi in _gaps(run_low, run_high, run_ids))
    return RunTally(
        counts=counted,
        at=at,
        event_id=high,
        pending=pending,
        run_id=run_high,
        runs_pending=runs_pending,
    )


def carry(conn: sa.Connection, at: float, tally: RunTally, total: int) -> RunTally | None:
    """``tally`` carried forward to this snapshot; None when counting again costs less."""
    if tally.event_id is None or tally.run_id is None or _ids_reused(conn, tally.event_id):
        return None
    created = _created_runs(conn, tally.run_id, tally.runs_pending)
    pending_ids = [i for i, _ in tally.pending]
    newer = run_events.c.id > tally.event_id
    if pending_ids:
        newer = sa.or_(newer, id_among(conn, run_events.c.id, pending_ids))
    rows = conn.execute(sa.select(run_events.c.id, run_events.c.run_id).where(newer)).all()
    moved = sorted({row.run_id for row in rows} - created.keys())
    if len(moved) + len(created) > max(CHUNK, MOVED_SHARE * total):
        return None
    seen = {row.id for row in rows}
    high = max([tally.event_id, *seen])
    counts = {job: dict(by) for job, by in tally.counts.items()}
    for job, status in created.values():
        _add(counts, job, status, 1)
    try:
        for start in range(0, len(moved), CHUNK):
            _move(conn, counts, tally, moved[start : start + CHUNK])
    except Unexplained:
        return None
    still = [(i, t) for i, t in tally.pending if i not in seen and at - t < PENDING_SECONDS]
    gaps = [(i, at) for i in range(tally.event_id + 1, high + 1) if i not in seen]
    run_high = max([tally.run_id, *created])
    found = sorted(created)
    runs_still = [
        (lo, hi, t)
        for first, last, t in tally.runs_pending
        if at - t < PENDING_SECONDS
        for lo, hi in _gaps(first - 1, last, found)
    ]
    run_gaps = [(lo, hi, at) for lo, hi in _gaps(tally.run_id, run_high, found)]
    return RunTally(
        counts=counts,
        at=at,
        event_id=high,
        pending=tuple(still + gaps),
        run_id=run_high,
        runs_pending=tuple(runs_still + run_gaps),
    )


def _created_runs(
    conn: sa.Connection, run_id: int, runs_pending: Sequence[tuple[int, int, float]]
) -> dict[int, tuple[str, RunStatus]]:
    """The runs the tally does not include (above ``run_id``, or among ``runs_pending``),
    each with its job and status now."""
    new = sa.or_(runs.c.id > run_id, *(runs.c.id.between(lo, hi) for lo, hi, _ in runs_pending))
    query = sa.select(runs.c.id, runs.c.job, runs.c.status).where(new)
    return {row.id: (row.job, RunStatus(row.status)) for row in conn.execute(query)}


def _gaps(after: int, up_to: int, present: Sequence[int]) -> list[tuple[int, int]]:
    """The ranges of ids in ``(after, up_to]`` missing from ``present`` (sorted)."""
    gaps: list[tuple[int, int]] = []
    expected = after + 1
    for i in present:
        if i > up_to:
            break
        if i < expected:
            continue
        if i > expected:
            gaps.append((expected, i - 1))
        expected = i + 1
    if expected <= up_to:
        gaps.append((expected, up_to))
    return gaps


def _ids_reused(conn: sa.Connection, event_id: int) -> bool:
    """Whether ids up to ``event_id`` may be handed out again: SQLite gives a new row
    the highest id plus one, so once the row at the tally's id is gone (pruned),
    a newer row may take an id the tally counts as seen."""
    if conn.dialect.name != "sqlite" or event_id == 0:
        return False
    return conn.scalar(sa.select(run_events.c.id).where(run_events.c.id == event_id)) is None


def _move(conn: sa.Connection, counts: Counts, tally: RunTally, run_ids: Sequence[int]) -> None:
    """Move each of ``run_ids`` from the status it had in ``tally`` to the one it has now."""
    now = {
        row.id: (row.job, RunStatus(row.status))
        for row in conn.execute(
            sa.select(runs.c.id, runs.c.job, runs.c.status).where(
                id_among(conn, runs.c.id, run_ids)
            )
        )
    }
    logs: dict[int, list[Any]] = {}
    for row in conn.execute(
        sa.select(run_events.c.id, run_events.c.run_id, run_events.c.kind, run_events.c.detail)
        .where(id_among(conn, run_events.c.run_id, run_ids))
        .order_by(run_events.c.run_id, run_events.c.id)
    ):
        logs.setdefault(row.run_id, []).append(row)
    missed = {i for i, _ in tally.pending}
    assert tally.event_id is not None
    for run_id in run_ids:
        if run_id not in now:
            raise Unexplained(run_id)  # a run's log outlived the run
        job, status = now[run_id]
        _add(counts, job, _status_then(logs.get(run_id, []), tally.event_id, missed), -1)
        _add(counts, job, status, 1)


def _status_then(log: Iterable[Any], event_id: int, missed: set[int]) -> RunStatus:
    """The status a run that the tally includes had then, from its log."""
    older = [row for row in log if row.id <= event_id and row.id not in missed]
    newer = [row for row in log if row.id > event_id or row.id in missed]
    for row in reversed(older):
        if row.kind in STATUS_AFTER:
            return STATUS_AFTER[row.kind]
    first = newer[0] if newer else None
    if first is None:
        raise Unexplained("a run named by the log has no row in it")
    if first.kind == RunEventKind.CLAIMED.value:
        return RunStatus.QUEUED
    if first.kind == RunEventKind.CANCELLED.value:
        detail = json.loads(first.detail) if first.detail else {}
        if "was" in detail:
            return RunStatus(detail["was"])
    raise Unexplained(f"a run without an earlier log row moved by {first.kind}")


def _add(counts: Counts, job: str, status: RunStatus, n: int) -> None:
    by_status = counts.setdefault(job, {})
    by_status[status] = by_status.get(status, 0) + n
    if not by_status[status]:
        del by_status[status]
        if not by_status:
            del counts[job]


def load(conn: sa.Connection) -> RunTally | None:
    """The tally saved last, if any."""
    found = read_snapshots.load(conn, SNAPSHOT)
    return None if found is None else RunTally.from_row(*found)


def save(conn: sa.Connection, tally: RunTally) -> None:
    """Save ``tally`` unless the one saved includes more of the log (another server's)."""
    if tally.event_id is not None:
        read_snapshots.save(conn, SNAPSHOT, tally.event_id, tally.to_json(), tally.at)
