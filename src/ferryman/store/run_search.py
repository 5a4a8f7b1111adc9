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
are a range of the processing log's index by worker (migration 0012), read
from the page's anchor a window at a time (see :func:`_claims_of`): a page
of a busy worker reads a few hundred index entries, whatever the size of
the log or whether the store knows the worker. An error walks the runs
newest first and stops at a page of matches, so a rare match on a huge
store reads more.
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
from ferryman.store.schema import run_events, runs

PREFIX_PROBE = 2000  # runs a run_key prefix is looked up by in the index, at most
CLAIM_WINDOWS = 4  # windows of a worker's claims, each four times the last, before all of them


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


def _claims_of(
    worker: str, *, below: int | None, above: int | None, by_time: bool, first: int
) -> Iterator[sa.ColumnElement[bool]]:
    """Runs ``worker`` claimed: a few of its claims first, more of them each time, then all.

    Its ``claimed`` log rows are a range of ``ix_ferryman_run_events_worker_id``
    (migration 0012) in run id order, whether the store has a row for the
    worker or not. In id order, a page reads the claims from its anchor on
    (newest first: run ids below ``below``; oldest first: above ``above``), a
    window of ``first`` log rows (a page, unless a run was claimed twice or
    other filters leave some out) growing fourfold: every claimed run
    between the anchor and the farthest run the window names is in it, so a
    full page from the window is exact, and a shorter one reads the next. In
    creation order (a time window), or past ``CLAIM_WINDOWS`` windows, every
    claim of the worker is read at once."""
    # The kind written out, not bound: the index holds the claims alone (but on
    # MariaDB), and a planner matches a partial index's predicate to the SQL text.
    claims = sa.literal(RunEventKind.CLAIMED.value, literal_execute=True)
    claimed = sa.select(run_events.c.run_id).where(
        run_events.c.worker_id == worker, run_events.c.kind == claims
    )
    if not by_time:
        if above is not None and below is None:  # oldest first, from ``above`` up
            nearest = claimed.where(run_events.c.run_id > above).order_by(run_events.c.run_id)
        else:
            nearest = claimed.order_by(run_events.c.run_id.desc())
            if below is not None:
                nearest = nearest.where(run_events.c.run_id < below)
        for windows in range(CLAIM_WINDOWS):
            window = nearest.limit(first * 4**windows)
            # A derived table around the LIMIT: MariaDB takes none in an IN subquery.
            yield runs.c.id.in_(sa.select(window.subquery().c.run_id))
    yield runs.c.id.in_(claimed)


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
    queries = [query]
    if found.worker is not None:
        claims = _claims_of(
            found.worker, below=before_id, above=after_id, by_time=by_time, first=limit + 1
        )
        queries = [query.where(claimed) for claimed in claims]
    for narrowed in queries:
        items = [records.run_from_row(row) for row in conn.execute(narrowed).mappings()]
        # A whole page (one more than it shows) from a window of the worker's claims
        # is exact (see _claims_of); the last window is all of them.
        if len(items) > limit:
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
