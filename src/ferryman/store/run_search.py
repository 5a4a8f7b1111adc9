"""Finding runs: by run_key (exact or prefix), job, status, creation window, worker, error.

One page at a time, newest first, paged both ways by keyset: ``before_id``
goes on to older runs, ``after_id`` back to newer ones, each from that run's
place in the order. Without a time window the order is the id; with one it
is creation time then id, read from the ``(created_at, id)`` index (in id
order a window a week back would scan every run created since).

What each filter costs: an exact run_key is a seek in the run_key index on
every store; job and status use the ``(job, status, id)`` index. A run_key
prefix is a range of an index of the keys (migration 0009 on PostgreSQL):
up to ``PREFIX_PROBE`` matches are found there, and a prefix more runs share
walks the runs newest first, where its matches are dense. A worker's runs
are read from the processing log written while it lived (its row in
``ferryman_workers``), its newest claims first, a window of the log at a
time (see :func:`_claims_of`): a page of a busy worker that claimed a million runs
costs a few thousand log rows; one with no registered worker reads the whole
log. An error walks the runs newest first and stops at a page of matches,
so a rare match on a huge store reads more.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from ferryman.model import Run, RunEventKind, RunStatus
from ferryman.store import records
from ferryman.store.read_queries import (
    DEAD_LETTER_SAMPLE,
    Page,
    _limit,
    id_among,
    newest_ended,
)
from ferryman.store.run_key_sql import RUN_KEY_PREFIX, SameRunKey, run_key_start
from ferryman.store.schema import run_events, runs, workers

PREFIX_PROBE = 2000  # runs a run_key prefix is looked up by in the index, at most
CLAIM_SKEW = 600.0  # seconds the claims of one moment may be out of order by id
CLAIM_WINDOW = 1000  # log rows a worker's newest claims are looked for in first


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunFilter:
    """What a list of runs is narrowed to; every field None means every run."""

    job: str | None = None
    status: RunStatus | None = None
    since: float | None = None  # created at or after (seconds since the epoch)
    until: float | None = None  # created before
    run_key: str | None = None  # exactly this run_key
    run_key_prefix: str | None = None
    worker: str | None = None  # claimed at least once by this worker
    error: str | None = None  # an error group's line, numbers as N (see error_kind)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunSearchPage:
    """A page of runs, newest first, with the keys of the pages either side (None: none)."""

    items: list[Run]
    next_before: int | None  # older runs
    previous_after: int | None  # newer runs


def error_pattern(error: str) -> str:
    """A LIKE pattern matching the errors of a group: its line, each N any digits."""
    escaped = error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + re.sub(r"N", "%", escaped) + "%"


def _filtered(conn: sa.Connection, found: RunFilter) -> sa.Select[Any]:
    query = sa.select(runs)
    if found.job is not None:
        query = query.where(runs.c.job == found.job)
    if found.status is not None:
        query = query.where(runs.c.status == RunStatus(found.status).value)
    if found.since is not None:
        query = query.where(runs.c.created_at >= found.since)
    if found.until is not None:
        query = query.where(runs.c.created_at < found.until)
    if found.run_key is not None:
        query = query.where(SameRunKey(runs.c.run_key, found.run_key))
    if found.run_key_prefix:
        query = query.where(*_prefixed(conn, found.run_key_prefix))
    if found.error is not None:
        ended = [RunStatus.FAILED.value, RunStatus.DEAD.value]
        if found.status is None:
            query = query.where(runs.c.status.in_(ended))
        # Among the runs the dead-letter page groups (its sample), so the group's
        # count there and its list here agree, and the list costs what the page does.
        newest = newest_ended(conn, job=found.job, sample=DEAD_LETTER_SAMPLE)
        if found.status is None or RunStatus(found.status).value in ended:
            # By id: SQLite would walk every run from the oldest of them up, a third
            # of a million at a million runs when the job's failures are rare.
            query = query.where(id_among(conn, runs.c.id, newest))
        else:
            query = query.where(runs.c.id >= (newest[-1] if newest else 0))
        query = query.where(runs.c.last_error.like(error_pattern(found.error), escape="\\"))
    return query


@dataclasses.dataclass(frozen=True, slots=True)
class _Claims:
    """Runs a worker claimed in some of its log rows, and whether that is all of them."""

    where: list[sa.ColumnElement[bool]]
    # Claims in older log rows name no run above this id (None: they were read too).
    floor: int | None


def _claims_of(conn: sa.Connection, worker: str) -> Iterator[_Claims]:
    """Runs ``worker`` claimed, from its newest claims back, more of them each time.

    A worker registers (``ferryman_workers``) before its first claim and says
    when it stopped, so its claims are log rows between two ids, found by
    their times (alive, or killed: up to the newest row). The log is read
    back from the end in windows growing fourfold (up to a third of the
    lifetime in all), each yielding the runs claimed in it above a
    ``floor``: a claim in an older row was made before the window's first
    claim (but for ``CLAIM_SKEW``), of a run created before it, and a run
    created ``CLAIM_SKEW`` before another has the lesser id (ids and creation
    times are taken by one statement, as for the log), so the floor is the
    id of the first run created ``2 * CLAIM_SKEW`` after that claim, less
    one. A page of runs above the floor is exact; a shorter one reads the
    next window. Last, all of its claims: the runs they name, between the
    least and greatest run id among them. A worker the store has no row for
    reads the whole log at once."""
    by_worker = sa.select(run_events.c.run_id).where(
        run_events.c.worker_id == worker, run_events.c.kind == RunEventKind.CLAIMED.value
    )
    lifetime = conn.execute(
        sa.select(workers.c.started_at, workers.c.stopped_at).where(workers.c.id == worker)
    ).first()
    if lifetime is None:
        yield _Claims([runs.c.id.in_(by_worker)], None)
        return
    first = _first_claim_at(conn, lifetime.started_at - CLAIM_SKEW)
    if first is None:  # nothing claimed since it started
        yield _Claims([sa.false()], None)
        return
    claimed = by_worker.where(run_events.c.id >= first)
    end = None
    if lifetime.stopped_at is not None:
        end = _first_claim_at(conn, lifetime.stopped_at + CLAIM_SKEW)
        if end is not None:
            claimed = claimed.where(run_events.c.id < end)
    if end is None:
        newest = conn.scalar(sa.select(sa.func.max(run_events.c.id)))
        end = first if newest is None else int(newest) + 1
    window = CLAIM_WINDOW
    while 4 * window <= end - first:  # the windows read a third of the lifetime at most
        start = end - window
        window *= 4
        floor = _run_floor(conn, start)
        if floor is None:
            continue
        # One range of log ids (given two lower bounds, SQLite seeks by the first
        # and filters by the other), the floor applied here (in SQL, SQLite would
        # read the log by run id for it).
        newer = conn.scalars(by_worker.where(run_events.c.id >= start, run_events.c.id < end))
        ids = sorted({run_id for run_id in newer if run_id > floor})
        yield _Claims([id_among(conn, runs.c.id, ids)] if ids else [sa.false()], floor)
    within = claimed.subquery()
    least, greatest = conn.execute(
        sa.select(sa.func.min(within.c.run_id), sa.func.max(within.c.run_id))
    ).one()
    if least is None:
        yield _Claims([sa.false()], None)
        return
    yield _Claims([runs.c.id.between(least, greatest), runs.c.id.in_(claimed)], None)


def _run_floor(conn: sa.Connection, start: int) -> int | None:
    """The greatest id a run claimed in a log row before ``start`` may have (see
    :func:`_claims_of`); None if no run was created late enough to tell."""
    claim = conn.execute(
        sa.select(run_events.c.at)
        .where(run_events.c.kind == RunEventKind.CLAIMED.value, run_events.c.id >= start)
        .order_by(run_events.c.id)
        .limit(1)
    ).first()
    if claim is None:
        return None
    later = conn.scalar(
        sa.select(runs.c.id)
        .where(runs.c.created_at > claim.at + 2 * CLAIM_SKEW)
        .order_by(runs.c.created_at, runs.c.id)
        .limit(1)
    )
    return None if later is None else int(later) - 1


def _first_claim_at(conn: sa.Connection, at: float) -> int | None:
    """The id of the first ``claimed`` log row at or after ``at`` (None: none is).

    Found by seeks of the log's primary key, each guessing where ``at`` falls
    between the two claims known either side of it (claims come at a steady
    pace, so a guess lands close), every other one halving the range instead
    (so a burst of claims costs no more than a binary search). Claimed rows
    are written by one short statement that reads the clock and takes the id
    together, so their times rise with their ids but for the statements in
    flight at once (``CLAIM_SKEW`` covers them; other rows are left out, as
    one written in a job's long transaction carries its start)."""
    claimed = sa.select(run_events.c.id, run_events.c.at).where(
        run_events.c.kind == RunEventKind.CLAIMED.value
    )

    def claim_from(event_id: int) -> tuple[int, float] | None:
        query = claimed.where(run_events.c.id >= event_id).order_by(run_events.c.id).limit(1)
        row = conn.execute(query).first()
        return None if row is None else (row.id, row.at)

    first = claim_from(0)
    newest = conn.execute(claimed.order_by(run_events.c.id.desc()).limit(1)).first()
    if first is None or newest is None or first[1] >= at:
        return None if first is None else first[0]
    if newest.at < at:
        return None
    before, after = first, (int(newest.id), float(newest.at))  # claims either side of ``at``
    # The first claim at or after ``at`` is ``after`` or lies between ``before`` and ``below``.
    below = after[0]
    guess = True
    while before[0] + 1 < below:
        lo, hi = before[0] + 1, below - 1
        middle = (lo + hi) // 2
        if guess and after[1] > before[1]:
            share = (at - before[1]) / (after[1] - before[1])
            middle = min(hi, max(lo, before[0] + round(share * (after[0] - before[0]))))
        guess = not guess
        probe = claim_from(middle)
        assert probe is not None  # ``after`` is one
        if probe[1] >= at:
            after, below = probe, middle  # and no claim between middle and it
        else:
            before = probe
    return after[0]


def _prefix_range(conn: sa.Connection, prefix: str) -> list[sa.ColumnElement[bool]]:
    """``prefix`` as a range of the run_key index (PostgreSQL: of its first
    ``RUN_KEY_PREFIX`` characters in byte order, the index of migration 0009)."""
    key: sa.ColumnElement[str] = runs.c.run_key
    if conn.dialect.name == "postgresql":
        prefix = prefix[:RUN_KEY_PREFIX]
        key = run_key_start(runs.c.run_key)
    within = [key >= prefix]
    upper = _past(prefix)
    if upper is not None:
        within.append(key < upper)
    return within


def _past(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: none is)."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are no characters: the next one is
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _prefixed(conn: sa.Connection, prefix: str) -> list[sa.ColumnElement[bool]]:
    """Runs whose run_key starts with ``prefix``: the few found by the index's range
    (up to ``PREFIX_PROBE``), or, for a prefix more runs share, a filter on the
    newest-first walk (matches are then dense enough that a page comes quickly)."""
    exact = runs.c.run_key.startswith(prefix, autoescape=True)
    probe = sa.select(runs.c.id).where(*_prefix_range(conn, prefix)).limit(PREFIX_PROBE + 1)
    ids = list(conn.scalars(probe))
    if len(ids) > PREFIX_PROBE:
        return [exact]
    return [runs.c.id.in_(ids), exact] if ids else [sa.false()]


def _order_key(conn: sa.Connection, by_time: bool, run_id: int) -> sa.ColumnElement[Any] | None:
    """The place of ``run_id`` in the order, as a comparable expression; None if unknown."""
    if not by_time:
        return sa.literal(run_id, runs.c.id.type)
    created_at = conn.scalar(sa.select(runs.c.created_at).where(runs.c.id == run_id))
    if created_at is None:  # pruned, or an id made up
        return None
    return sa.tuple_(
        sa.literal(created_at, runs.c.created_at.type), sa.literal(run_id, runs.c.id.type)
    )


def search_runs(
    conn: sa.Connection,
    found: RunFilter,
    *,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> RunSearchPage:
    """A page of the runs ``found`` selects, newest first (see the module for the order)."""
    limit = _limit(limit)
    by_time = found.since is not None or found.until is not None
    key: Any = sa.tuple_(runs.c.created_at, runs.c.id) if by_time else runs.c.id
    columns = [runs.c.created_at, runs.c.id] if by_time else [runs.c.id]
    query = _filtered(conn, found).limit(limit + 1)
    forward = after_id is not None and before_id is None
    anchor = after_id if forward else before_id
    if anchor is not None:
        place = _order_key(conn, by_time, anchor)
        if place is None:
            place = sa.literal(anchor, runs.c.id.type)
            key = runs.c.id
        query = query.where(key > place if forward else key < place)
    if forward:
        query = query.order_by(*[c.asc() for c in columns])
    else:
        query = query.order_by(*[c.desc() for c in columns])
    windows = _claims_of(conn, found.worker) if found.worker is not None else [_Claims([], None)]
    for claims in windows:
        rows = conn.execute(query.where(*claims.where)).mappings()
        items = [records.run_from_row(row) for row in rows]
        # Exact once every claim was read, or, in id order, once the page lies above
        # the floor (every run there the worker claimed was read): newest first, a
        # whole page; oldest first, from an anchor at or above it.
        if claims.floor is None or (
            not by_time and (len(items) > limit if not forward else (anchor or 0) >= claims.floor)
        ):
            break
    more = len(items) > limit
    items = items[:limit]
    if forward:
        items.reverse()
    if not items:
        return RunSearchPage(items=[], next_before=None, previous_after=None)
    older = more if not forward else True
    newer = anchor is not None if not forward else more
    return RunSearchPage(
        items=items,
        next_before=items[-1].id if older else None,
        previous_after=items[0].id if newer else None,
    )


def list_runs(
    conn: sa.Connection,
    *,
    job: str | None = None,
    status: RunStatus | None = None,
    since: float | None = None,
    until: float | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> Page[Run]:
    """Runs newest first by job, status and creation window (the API's list)."""
    found = RunFilter(job=job, status=status, since=since, until=until)
    page = search_runs(conn, found, before_id=before_id, limit=limit)
    return Page(items=page.items, next_before=page.next_before)
