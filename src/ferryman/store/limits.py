"""Claims of limited jobs: concurrency, per-key concurrency and rate, enforced in the store.

A job is *limited* when its definition sets ``concurrency`` or ``rate``, or
when any of its runs was enqueued with a ``concurrency_key`` (its row in
``ferryman_job_limits`` then exists). Its claims do not take the plain path
of the backend: each one

1. locks the job's row in ``ferryman_job_limits`` (PostgreSQL and MariaDB;
   SQLite's write transactions already run one at a time), so that claims of
   the job count the running runs one after another, each seeing the runs the
   one before it committed. The claim's first statement locks the rows of all
   its limited jobs at once, in job order, and finds which of its jobs have a
   row (are limited) by the same read (:meth:`Limits.lock_limited`);
2. counts what runs: ``status = 'running'`` includes a run whose lease
   expired, so the slot of a dead worker is freed only when its run is taken
   over (and is then the taker's), never while a zombie may still run it;
3. refills the rate bucket by the database's clock, read once the lock is
   held, and takes tokens from it;
4. leases the due runs it admits in the same transaction, skipping any
   another transaction holds (an operator's cancel, say).

A takeover of an expired lease neither needs a slot (the run held one all
along) nor a token (its claim took one).

On PostgreSQL the database's clock is read inside the statements that need
it to follow something (the lock, the count) rather than by a statement of
its own: the claim's clock is the one its locking statement read, so that a
claim of a limited job costs no statement for the clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from ferryman.model import Rate, RunStatus
from ferryman.store.dialect import Backend, ClaimRequest
from ferryman.store.run_rows import status_is
from ferryman.store.schema import job_limits, runs

# Due runs a claim reads ahead of its room, first: the room plus this slack.
# When runs sharing a key leave the claim short, it reads once more, WIDE_SCAN
# times as far.
SCAN_SLACK = 32
WIDE_SCAN = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class JobLimits:
    """What a job's definition limits: see :meth:`ferryman.App.job`."""

    concurrency: int | None = None
    key_concurrency: int = 1
    rate: Rate | None = None

    @property
    def limited(self) -> bool:
        """Whether every claim of the job must take the limited path."""
        return self.concurrency is not None or self.rate is not None


NO_LIMITS = JobLimits()


@dataclass(frozen=True, slots=True)
class Locked:
    """The limited jobs of a claim, their rows locked: see :meth:`Limits.lock_limited`."""

    jobs: list[str]
    buckets: dict[str, Any] = field(default_factory=dict)  # by job: tokens, refilled_at
    # The database's clock, read once every row was locked (where the statement reads it).
    now: float | None = None
    # False: no lease of the claim's jobs had expired by that clock.
    expired: bool = True


def _due(
    *,
    counted: bool,
    clock: sa.ColumnElement[float] | None = None,
    ordered: bool = False,
    indexed_by: str | None = None,
) -> sa.Select[Any]:
    """The first ``scan`` due runs of a job, in claim order, whose key has room among running runs.

    A key at its limit is passed over in the statement, however many runs it
    has queued, so that it holds none of the others up. ``counted``: with the
    running runs of each run's key (``key_concurrency`` above 1 admits more
    than one run of a key, counting those). ``clock``: with the database's
    clock on each row, read while the statement runs (see :class:`Limits`).
    ``ordered``: with the columns of the claim order and each run's place in
    the table (PostgreSQL's ``ctid``, as ``tid``), for a statement that picks
    from these rows itself and finds the runs it picks by their place, no
    index descent per run (:meth:`Backend.lease_due`, PostgreSQL's alone).

    The job's running keys are read once and looked up per due run (hashed),
    never counted per due run by a subquery or a join: a planner whose
    statistics say few runs are running may walk every running run (and dead
    index entry of one) for each due run that way, a claim taking seconds.
    """
    running_keys, full_keys = _running_keys(counted, indexed_by)
    place: list[Any] = [sa.literal_column(f"{runs.name}.ctid").label("tid")] if ordered else []
    queued = (
        sa.select(
            runs.c.id, runs.c.concurrency_digest, runs.c.priority, runs.c.available_at, *place
        )
        .where(
            runs.c.job == sa.bindparam("job"),
            status_is(RunStatus.QUEUED),
            runs.c.available_at <= sa.bindparam("now"),
            sa.or_(
                runs.c.concurrency_digest.is_(None), runs.c.concurrency_digest.not_in(full_keys)
            ),
        )
        .order_by(runs.c.priority.desc(), runs.c.available_at, runs.c.id)
        .limit(sa.bindparam("scan"))
    )
    # A key read here has no run running, unless key_concurrency is above 1.
    no_count = (queued.selected_columns, sa.literal(0, sa.Integer), queued)
    due, key_running, statement = _counted_per_key(queued, running_keys) if counted else no_count
    columns = [
        due.id,
        due.concurrency_digest,
        key_running.label("key_running"),
        *([due.priority, due.available_at, due.tid] if ordered else []),
        *([] if clock is None else [clock.label("clock")]),
    ]
    return statement.with_only_columns(*columns, maintain_column_froms=False)


def _running_keys(counted: bool, indexed_by: str | None = None) -> tuple[Any, Any]:
    """The job's running keys (one row per running run) and those full (at their limit).

    ``indexed_by``: the index (SQLite's) the running runs are found by, never a
    walk of the table, whatever the planner's statistics say (stale after a
    bulk enqueue, when no run was running).
    """
    running_keys: Any
    if indexed_by is None:
        running = runs.alias("running")
        running_keys = sa.select(running.c.concurrency_digest).where(
            running.c.job == sa.bindparam("job"),
            status_is(RunStatus.RUNNING, running),
            # Said for the partial index of running keys (it holds no other runs).
            running.c.concurrency_digest.is_not(None),
        )
    else:  # the same read, written out: SQLAlchemy renders no index hint for SQLite
        running_keys = sa.text(
            f"SELECT running.concurrency_digest FROM {runs.name} AS running "
            f"INDEXED BY {indexed_by} WHERE running.job = :job "
            f"AND running.status = '{RunStatus.RUNNING.value}' "
            "AND running.concurrency_digest IS NOT NULL"
        ).columns(sa.column("concurrency_digest", runs.c.concurrency_digest.type))
    if not counted:  # one running run per key (the default): a running key is full
        return running_keys, running_keys
    # The keys with key_concurrency runs running are full.
    running_keys = running_keys.cte("running_keys")
    full_keys = (
        sa.select(running_keys.c.concurrency_digest)
        .group_by(running_keys.c.concurrency_digest)
        .having(sa.func.count() >= sa.bindparam("key_concurrency"))
    )
    return running_keys, full_keys


def _counted_per_key(queued: sa.Select[Any], running_keys: Any) -> tuple[Any, Any, sa.Select[Any]]:
    """The runs ``queued`` reads, each with the running runs of its key: a sort, no join.

    The runs read and the job's running runs (``running_keys``) in one list,
    each key's running runs summed over it: a planner that believes few runs
    are running has no per-row lookup to choose badly for. The columns of the rows, their
    ``key_running`` and the statement to select columns of them into.
    """
    due = queued.subquery("due")
    running = [
        running_keys.c.concurrency_digest if column.name == "concurrency_digest" else sa.null()
        for column in due.c
    ]
    listed = sa.union_all(
        sa.select(*due.c, sa.literal(0, sa.Integer).label("is_running")),
        sa.select(*running, sa.literal(1)),
    ).subquery("listed")
    summed = sa.func.sum(listed.c.is_running).over(partition_by=listed.c.concurrency_digest)
    counted = sa.select(*listed.c, summed.label("key_running")).subquery("counted")
    statement = (
        sa.select()
        .where(counted.c.is_running == 0)
        .order_by(counted.c.priority.desc(), counted.c.available_at, counted.c.id)
    )
    return counted.c, counted.c.key_running, statement


# One running run per key (the default) needs no count: a key read here has none.
DUE_ONE_PER_KEY = _due(counted=False)
DUE_COUNTED = _due(counted=True)
DUE_ORDERED = {1: _due(counted=False, ordered=True), 2: _due(counted=True, ordered=True)}


class Limits:
    """The limited claims of one store database (see the module)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # In job order: two claims locking rows of the same jobs wait, never deadlock.
        lock = (
            sa.select(job_limits.c.job, job_limits.c.tokens, job_limits.c.refilled_at)
            .where(job_limits.c.job.in_(sa.bindparam("jobs", expanding=True)))
            .order_by(job_limits.c.job)
            .with_for_update()
        )
        self._clock_in_statements = backend.clock_follows_locks
        self._lock: sa.Select[Any] = lock
        self._due_one_per_key, self._due_counted = DUE_ONE_PER_KEY, DUE_COUNTED
        if backend.name == "sqlite":  # no index of running keys there (migration 0014)
            by_status = "ix_ferryman_runs_job_status"
            self._due_one_per_key = _due(counted=False, indexed_by=by_status)
            self._due_counted = _due(counted=True, indexed_by=by_status)
        if self._clock_in_statements:
            # The clock outside the locking subquery: read on each row once it
            # is locked, the last reading after every lock.
            # Whether a lease of the claim's jobs has expired, read with it: a
            # claim need not look for their runs when none has. (A lease that
            # expired after the statement's snapshot, taken before the lock,
            # is only taken over by the next claim; one that the snapshot shows
            # expired but a claim before took over is looked for and not found.)
            # The clock as a subquery of its own: a value the index of
            # leases is searched by, where the clock itself (volatile) is not.
            expired = sa.exists().where(
                status_is(RunStatus.RUNNING),
                runs.c.lease_expires_at < sa.select(backend.now).scalar_subquery(),
                runs.c.job.in_(sa.bindparam("jobs", expanding=True)),
            )
            bucket = lock.subquery("bucket")
            self._lock = sa.select(*bucket.c, backend.now.label("now"), expired.label("expired"))
            self._due_one_per_key = _due(counted=False, clock=backend.now)
            self._due_counted = _due(counted=True, clock=backend.now)
        count_running = sa.select(sa.func.count()).where(
            runs.c.job == sa.bindparam("job"), runs.c.status == RunStatus.RUNNING.value
        )
        # Named apart from the columns, as an UPDATE's parameters must be.
        charge = (
            job_limits.update()
            .where(job_limits.c.job == sa.bindparam("charged_job"))
            .values(tokens=sa.bindparam("tokens_left"), refilled_at=sa.bindparam("charged_at"))
        )
        # Run as the backend runs its hot statements (SQLite: on the driver).
        prepared = backend.prepared
        self._due_one_per_key_rows = prepared(self._due_one_per_key)
        self._due_counted_rows = prepared(self._due_counted)
        self._count_running_rows = prepared(count_running)
        self._charge_rows = prepared(charge)

    def lock_limited(
        self, conn: sa.Connection, jobs: Sequence[str], limits: Mapping[str, JobLimits]
    ) -> Locked:
        """The jobs among ``jobs`` whose claims take the limited path, in ``jobs``' order,
        their rows locked for the rest of the transaction; the first statement of a claim.

        A job is limited by its definition or by having a row (a run of it
        was enqueued with a key): one read locks the rows there are and tells
        which jobs have one. A job limited by its definition gets its row
        here, the first time. Locked before the claim reads anything else, so
        that what it reads (its clock first) follows the claims before it.
        """
        if not jobs:
            return Locked(jobs=[])
        rows = conn.execute(self._lock, {"jobs": sorted(set(jobs))}).all()
        missing = {job for job in jobs if limits.get(job, NO_LIMITS).limited}
        missing.difference_update(row.job for row in rows)
        if missing:
            self.mark_keyed(conn, sorted(missing))
            rows = conn.execute(self._lock, {"jobs": sorted(set(jobs))}).all()
        buckets = {row.job: row for row in rows}
        limited = [job for job in jobs if job in buckets]
        if not (rows and self._clock_in_statements):
            return Locked(jobs=limited, buckets=buckets)
        last = rows[-1]
        return Locked(jobs=limited, buckets=buckets, now=float(last.now), expired=last.expired)

    def mark_keyed(self, conn: sa.Connection, jobs: Sequence[str]) -> None:
        """Give ``jobs`` their row (if absent): their claims take the limited path from now on."""
        rows = [{"job": job, "tokens": None, "refilled_at": None} for job in sorted(set(jobs))]
        if rows:
            self.backend.insert_absent(conn, job_limits, rows, unique=["job"])

    def claim(
        self, conn: sa.Connection, job: str, limits: JobLimits, request: ClaimRequest, bucket: Any
    ) -> list[tuple[Any, float]]:
        """Lease up to ``request.room`` due runs of ``job`` its limits admit; each with its time.

        Also charges the rate bucket for them. The time of a claim is read
        after the running runs were counted: a run whose end the count saw
        ended earlier by the same clock, so the processing log never shows
        two runs in one slot at once. Where the backend can
        (:meth:`Backend.lease_due`), the runs are picked and leased in one
        statement; read again, further, only when runs sharing a key left
        the claim short.
        """
        # ``request.now`` was read once the job's row was locked (``bucket``,
        # see lock_limited): claims of the job see the clock in the order they
        # refill the bucket. (SQLite: the transaction was the lock.)
        room, now = request.room, request.now
        one_writer = self.backend.ids_in_commit_order
        if not (one_writer or self._clock_in_statements):
            # Read again, just before the count (MariaDB): the bucket's refill
            # then trails the claim's own time by no more than it did.
            now = self.backend.clock(conn)
        tokens = self._tokens(bucket, limits.rate, now)
        if tokens is not None:
            room = min(room, math.floor(tokens))
        if limits.concurrency is not None and room > 0:
            running = self._count_running_rows(conn, {"job": job})[0][0]
            room = min(room, limits.concurrency - running)
        leased: list[tuple[Any, float]] = []
        if room > 0:
            scan = room + SCAN_SLACK
            params: dict[str, Any] = {"job": job, "now": now, "scan": scan, "room": room}
            params.update(key_concurrency=limits.key_concurrency, tokens=tokens)
            params["lease_seconds"] = request.lease_seconds
            due = DUE_ORDERED[min(limits.key_concurrency, 2)]
            done = self.backend.lease_due(conn, due, params, request.worker_id)
            if done is not None:  # charged by the statement
                leased = [(row, done.at) for row in done.rows]
                if done.picked >= room or done.scanned < scan:
                    return leased
                room -= done.picked
        admitted, counted_at = (
            self._pick(conn, job, limits.key_concurrency, room, now) if room > 0 else ([], None)
        )
        refilled_at = now
        if admitted:
            if not one_writer:
                now = self.backend.clock(conn) if counted_at is None else counted_at
            more = replace(request, jobs=(job,), room=0, reclaim=admitted, now=now, events=())
            leased += [(row, now) for row in self.backend.lease_queued(conn, admitted, more)]
        if tokens is not None:
            # The runs leased, not those picked: one another transaction
            # holds (and the lease skips) takes no token.
            self.charge(conn, job, tokens - len(leased), refilled_at)
        return leased

    def charge(self, conn: sa.Connection, job: str, tokens: float, now: float) -> None:
        self._charge_rows(conn, {"charged_job": job, "tokens_left": tokens, "charged_at": now})

    @staticmethod
    def _tokens(bucket: Any, rate: Rate | None, now: float) -> float | None:
        """The tokens in the job's bucket at ``now``, if it has a rate."""
        if rate is None:
            return None
        if bucket.tokens is None or bucket.refilled_at is None:
            return rate.capacity
        elapsed = max(0.0, now - float(bucket.refilled_at))
        refilled: float = float(bucket.tokens) + elapsed * rate.per_second
        return min(rate.capacity, refilled)

    def _pick(
        self, conn: sa.Connection, job: str, key_concurrency: int, room: int, now: float
    ) -> tuple[list[int], float | None]:
        """Due runs in claim order whose key has room, counting those picked.

        Read again, further, only when runs sharing a key left the claim short.
        Also the database's clock as the statement that counted them read it,
        where the statement reads it (see ``Backend.clock_follows_locks``).
        """
        due = self._due_one_per_key_rows if key_concurrency == 1 else self._due_counted_rows
        params = {"job": job, "now": now, "key_concurrency": key_concurrency}
        scan = room + SCAN_SLACK
        while True:
            rows = due(conn, {**params, "scan": scan})
            picked = _in_key_limits(rows, key_concurrency, room)
            if len(picked) >= room or len(rows) < scan or scan > room + SCAN_SLACK:
                counted_at = float(rows[-1].clock) if rows and self._clock_in_statements else None
                return picked, counted_at
            scan *= WIDE_SCAN


def _in_key_limits(rows: Sequence[Any], key_concurrency: int, room: int) -> list[int]:
    """The ids of ``rows`` (id, key digest, its running runs, ...) in order, up to ``room``.

    A run is picked while the runs of its key running and picked before it
    number fewer than ``key_concurrency``.
    """
    picked: list[int] = []
    taken: dict[bytes, int] = {}
    for row in rows:
        run_id, digest, key_running = row[0], row[1], row[2]  # and the clock, where read
        if digest is not None:
            digest = bytes(digest)
            ahead = taken.get(digest, key_running)
            if ahead >= key_concurrency:
                continue
            taken[digest] = ahead + 1
        picked.append(run_id)
        if len(picked) >= room:
            break
    return picked


def limits_of(definitions: Mapping[str, Any]) -> dict[str, JobLimits]:
    """The limits of the job definitions that set any (``concurrency``, ``rate``, ...)."""
    found: dict[str, JobLimits] = {}
    for name, definition in definitions.items():
        limits = JobLimits(
            concurrency=definition.concurrency,
            key_concurrency=definition.key_concurrency,
            rate=definition.rate,
        )
        if limits != NO_LIMITS:
            found[name] = limits
    return found
