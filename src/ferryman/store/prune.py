"""Pruning old finished runs: their payloads, checkpoints and processing logs go.

What stays of a pruned run is its row: job, run_key (so that submitting the
same key again is still deduplicated, for ever), status, attempts, times and
last error. Its payload reads as ``None`` afterwards, its checkpoint is gone
and so is its processing log. A finished run without a processing log is how
a pruned run is recognised (every finish is logged), and ``ferryman retry``
leaves it alone: there is no payload to run it with.

Runs are pruned in batches of ``batch`` runs, walking the ``finished_at``
index in order; each batch is read in one short read and pruned in one short
write transaction of its own, so workers claim and finish runs in between
(on SQLite each batch holds the write lock only while it deletes one batch's
rows). A run finished at or after the cutoff, or not finished, is never
touched, even if it was retried between the read and the write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ferryman.model import RunStatus
from ferryman.store.schema import run_events, runs

FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.DEAD, RunStatus.CANCELLED)
DEFAULT_BATCH = 500
EMPTY_PAYLOAD = "null"  # JSON for None: what a pruned run's payload reads as

Connect = Callable[[str], contextlib.AbstractContextManager[sa.Connection]]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a walk of the ``finished_at`` index stands: just after this run."""

    finished_at: float
    run_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What one prune did (or, with ``dry_run``, would have done)."""

    runs: int  # finished runs older than the cutoff that were walked
    events: int  # processing log rows deleted (or to delete)
    payloads: int  # payloads and checkpoints emptied (or to empty)
    finished_before: float  # the cutoff, seconds since the epoch by the database's clock
    batches: int
    last: Position | None  # the last run walked: a later prune may start after it


def _finished_before(cutoff: float) -> sa.ColumnElement[bool]:
    return sa.and_(
        runs.c.finished_at < cutoff,
        runs.c.status.in_([status.value for status in FINISHED]),
    )


def _not_empty() -> sa.ColumnElement[bool]:
    return sa.or_(runs.c.payload != EMPTY_PAYLOAD, runs.c.checkpoint.is_not(None))


def next_batch(
    conn: sa.Connection, after: Position | None, cutoff: float, limit: int
) -> list[Position]:
    """The next ``limit`` finished runs older than ``cutoff``, after ``after``, in index order."""
    query = (
        sa.select(runs.c.finished_at, runs.c.id)
        .where(_finished_before(cutoff))
        .order_by(runs.c.finished_at, runs.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(
            # Redundant with the OR below, and what lets the index scan start at
            # ``after`` instead of the oldest run on every batch.
            runs.c.finished_at >= after.finished_at,
            sa.or_(
                runs.c.finished_at > after.finished_at,
                sa.and_(runs.c.finished_at == after.finished_at, runs.c.id > after.run_id),
            ),
        )
    return [Position(row.finished_at, row.id) for row in conn.execute(query)]


def to_prune(conn: sa.Connection, ids: Sequence[int]) -> tuple[int, int]:
    """Log rows and payloads that pruning ``ids`` would delete and empty (a dry run)."""
    events = conn.execute(
        sa.select(sa.func.count()).select_from(run_events).where(run_events.c.run_id.in_(ids))
    ).scalar_one()
    payloads = conn.execute(
        sa.select(sa.func.count()).select_from(runs).where(runs.c.id.in_(ids), _not_empty())
    ).scalar_one()
    return int(events), int(payloads)


def prune_batch(conn: sa.Connection, ids: Sequence[int], cutoff: float) -> tuple[int, int]:
    """Delete the log rows and empty the payloads of ``ids``, in ``conn``'s transaction.

    The runs are locked and checked again first: one retried since the batch
    was read keeps everything. They are locked by primary key, one batch's
    rows and no more: a statement that scanned ``runs`` for them (a subquery)
    would lock queued runs too on MariaDB, and claims skip locked runs.
    """
    kept = list(
        conn.execute(
            sa.select(runs.c.id)
            .where(runs.c.id.in_(ids), _finished_before(cutoff))
            .with_for_update()
        ).scalars()
    )
    if not kept:
        return 0, 0
    events = conn.execute(run_events.delete().where(run_events.c.run_id.in_(kept))).rowcount
    payloads = conn.execute(
        runs.update()
        .where(runs.c.id.in_(kept), _not_empty())
        .values(payload=EMPTY_PAYLOAD, checkpoint=None)
    ).rowcount
    return events, payloads


def prune_runs(
    read: Connect,
    write: Connect,
    cutoff: float,
    *,
    batch: int = DEFAULT_BATCH,
    dry_run: bool = False,
    after: Position | None = None,
) -> PruneResult:
    """Prune every finished run older than ``cutoff``, ``batch`` runs per transaction."""
    walked = events = payloads = batches = 0
    position = after
    while True:
        with read("reading finished runs to prune") as conn:
            found = next_batch(conn, position, cutoff, batch)
            if found and dry_run:
                counted = to_prune(conn, [p.run_id for p in found])
        if not found:
            break
        if not dry_run:
            with write("pruning finished runs") as conn:
                counted = prune_batch(conn, [p.run_id for p in found], cutoff)
        walked += len(found)
        events += counted[0]
        payloads += counted[1]
        batches += 1
        position = found[-1]
    return PruneResult(
        runs=walked,
        events=events,
        payloads=payloads,
        finished_before=cutoff,
        batches=batches,
        last=position,
    )
