"""The records of the run queue, and the rows and fragments every backend writes them with.

Every write a worker makes for a run is *fenced* (:func:`fence`): it matches
the row only while ``lease_token`` is still the token the worker got when it
claimed the run. A claim (and a release) increments the token, so a worker
whose lease was taken over matches nothing and its write is refused with
``LeaseLost``.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa

from ferryman.model import RunEventKind, RunStatus
from ferryman.store import records
from ferryman.store.keys import concurrency_key_digest, run_key_digest
from ferryman.store.schema import runs

# Rows per statement when a batch is written; keeps every statement well under
# the bound-parameter limits of SQLite (32,766) and PostgreSQL (65,535).
CHUNK = 1000
EVENT_ERROR_CHARS = 500
QUEUED = RunStatus.QUEUED.value  # read once: an enum's .value is a property call per run


_new_object = object.__new__


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# which cost 1.6 us of the 3.5 us a run took to build (measured), a tenth of a
# batched submit's time in the client. Nothing assigns to one once built.
@dataclass(slots=True, kw_only=True, eq=False)
class NewRun:
    """A run to enqueue. Built only with a key the store can hold exactly
    (:class:`~ferryman.PayloadError` naming it otherwise), so a batch is refused
    before anything is written."""

    job: str
    run_key: str
    payload_json: str
    max_attempts: int
    priority: int = 0
    # Due at the database's clock plus ``delay`` seconds, or at ``not_before``
    # (seconds since the epoch) if that is later.
    delay: float = 0.0
    not_before: float | None = None
    concurrency_key: str | None = None
    key_digest: bytes = field(init=False, repr=False, compare=False)
    concurrency_digest: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        records.checked_key(self.run_key, f"run_key of job {self.job!r}")
        self.key_digest = run_key_digest(self.job, self.run_key)
        self.concurrency_digest = None
        if self.concurrency_key is not None:
            records.checked_key(self.concurrency_key, f"concurrency_key of job {self.job!r}")
            self.concurrency_digest = concurrency_key_digest(self.concurrency_key)

    @classmethod
    def checked(
        cls,
        job: str,
        run_key: str,
        payload_json: str,
        max_attempts: int,
        priority: int,
        delay: float,
        not_before: float | None,
        concurrency_key: str | None,
        key_digest: bytes,
    ) -> NewRun:
        """The run ``NewRun(...)`` builds, of keys the caller has checked
        (:func:`~ferryman.store.records.storable_keys`) and the digest of its run key.

        A batch's runs are built here: the dataclass's keyword call and
        ``__post_init__`` took 1.1 us of the 2 us a run cost (measured).
        """
        new = _new_object(cls)
        new.job = job
        new.run_key = run_key
        new.payload_json = payload_json
        new.max_attempts = max_attempts
        new.priority = priority
        new.delay = delay
        new.not_before = not_before
        new.concurrency_key = concurrency_key
        new.key_digest = key_digest
        new.concurrency_digest = (
            None if concurrency_key is None else concurrency_key_digest(concurrency_key)
        )
        return new

    def due_at(self, now: float) -> float:
        """When the run becomes due, given the database's clock now."""
        due = now + self.delay
        return due if self.not_before is None else max(due, self.not_before)


class Lease(NamedTuple):
    """A worker's hold on a run: valid while the run's token is still ``token``.

    A named tuple rather than a frozen dataclass: leases are built, hashed and
    compared several times per run a worker executes, and a tuple does that in C.
    """

    run_id: int
    token: int


# Not frozen, unlike the other records: a worker builds one per run it claims and
# an outcome per attempt, and a frozen dataclass's __init__ sets each field
# through object.__setattr__, three times the cost (1.3 us against 0.4 for
# ClaimedRun, measured). Nothing changes them once built.
@dataclass(slots=True, kw_only=True)
class ClaimedRun:
    id: int
    job: str
    run_key: str
    payload: Any
    attempt: int
    max_attempts: int
    lease_token: int
    checkpoint: Any
    claimed_at: float = 0.0  # the database's clock when this claim was made
    # This process's time.monotonic() when the claim came back (for ctx.deadline).
    claimed_monotonic: float = field(default_factory=time.monotonic, compare=False)

    @property
    def lease(self) -> Lease:
        return Lease(run_id=self.id, token=self.lease_token)


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    DEAD = "dead"


@dataclass(slots=True, kw_only=True)  # not frozen: see ClaimedRun
class Outcome:
    """How an attempt ended, to be written fenced by its lease."""

    kind: OutcomeKind
    lease: Lease
    attempt: int
    error: str | None = None
    retry_delay: float = 0.0
    # Runs the job asked for (``ctx.submit``): enqueued only with this success.
    children: tuple[NewRun, ...] = ()


T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_row(new: NewRun, now: float) -> dict[str, Any]:
    """The row of a new run, queued; due at ``now`` unless it asked for later."""
    return {
        "job": new.job,
        "run_key": new.run_key,
        "key_digest": new.key_digest,
        "payload": new.payload_json,
        "status": QUEUED,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "available_at": new.due_at(now),
        "priority": new.priority,
        "concurrency_key": new.concurrency_key,
        "concurrency_digest": new.concurrency_digest,
        "lease_token": 0,
        "created_at": now,
        "updated_at": now,
    }


def run_values(new: NewRun, now: float) -> tuple[Any, ...]:
    """The values of :func:`run_row`, in the order of :data:`RUN_ROW_COLUMNS`."""
    return (
        *(new.job, new.run_key, new.key_digest, new.payload_json, QUEUED, 0),
        *(new.max_attempts, new.due_at(now), new.priority, new.concurrency_key),
        *(new.concurrency_digest, 0, now, now),
    )


# The columns of run_row, in its order.
RUN_ROW_COLUMNS = (
    *("job", "run_key", "key_digest", "payload", "status", "attempt", "max_attempts"),
    *("available_at", "priority", "concurrency_key", "concurrency_digest", "lease_token"),
    *("created_at", "updated_at"),
)


def event(
    run_id: int,
    kind: RunEventKind,
    at: float,
    attempt: int,
    worker_id: str | None = None,
    lease_token: int | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "kind": kind.value,
        "at": at,
        "attempt": attempt,
        "worker_id": worker_id,
        "lease_token": lease_token,
        "detail": None if detail is None else records.to_json(detail, "event detail"),
    }


def error_summary(error: str | None) -> str | None:
    if error is None:
        return None
    first = error.strip().splitlines()[-1] if error.strip() else ""
    return records.clean_text(first[:EVENT_ERROR_CHARS])


def end_values(outcome: Outcome, now: float) -> dict[str, Any]:
    """A retry is queued again after its delay; any other outcome is finished now.

    ``available_at`` and ``finished_at`` None: the run's own value stays.
    """
    if outcome.kind is OutcomeKind.SUCCEEDED:
        return {
            "status": RunStatus.SUCCEEDED.value,
            "available_at": None,
            "finished_at": now,
            "error": None,
            "now": now,
        }
    if outcome.kind is OutcomeKind.RETRY:
        return {
            "status": RunStatus.QUEUED.value,
            "available_at": now + outcome.retry_delay,
            "finished_at": None,
            "error": records.clean_optional(outcome.error),
            "now": now,
        }
    status = RunStatus.FAILED if outcome.kind is OutcomeKind.FAILED else RunStatus.DEAD
    return {
        "status": status.value,
        "available_at": None,
        "finished_at": now,
        "error": records.clean_optional(outcome.error),
        "now": now,
    }


def outcome_event(outcome: Outcome, now: float, worker_id: str) -> dict[str, Any]:
    detail: dict[str, Any] | None = None
    if outcome.kind is OutcomeKind.RETRY:
        kind = RunEventKind.RETRY_SCHEDULED
        detail = {"delay": round(outcome.retry_delay, 3), "error": error_summary(outcome.error)}
    elif outcome.kind is OutcomeKind.SUCCEEDED:
        kind = RunEventKind.SUCCEEDED
    else:
        kind = RunEventKind.FAILED if outcome.kind is OutcomeKind.FAILED else RunEventKind.DEAD
        detail = {"error": error_summary(outcome.error)}
    return event(
        outcome.lease.run_id, kind, now, outcome.attempt, worker_id, outcome.lease.token, detail
    )


# What a claim returns of each run it leased (see :func:`claimed_run`).
CLAIMED_COLUMNS = (
    runs.c.id,
    runs.c.job,
    runs.c.run_key,
    runs.c.payload,
    runs.c.attempt,
    runs.c.max_attempts,
    runs.c.lease_token,
    runs.c.checkpoint,
)


def fence(leases: Sequence[Lease]) -> sa.ColumnElement[bool]:
    """The rows still running under one of ``leases``: the condition of every fenced write.

    The rows are named by primary key first: on MariaDB, an ``UPDATE`` left
    to find them through the status index locked the index entry of every
    running run it passed, and deadlocked with a writer of one of those runs
    (measured with many async jobs committing at once;
    docs/internals/mariadb.md). Write with :func:`fenced_update`.
    """
    return sa.and_(
        runs.c.id.in_([le.run_id for le in leases]),
        runs.c.status == RunStatus.RUNNING.value,
        sa.tuple_(runs.c.id, runs.c.lease_token).in_([(le.run_id, le.token) for le in leases]),
    )


def fenced_update(leases: Sequence[Lease]) -> sa.Update:
    """An UPDATE of the rows :func:`fence` matches, reaching them by primary key.

    On MariaDB the primary key is forced: read through ``(status, id)``, an
    UPDATE locks the index entry before the row, while a write that found the
    row by primary key locks the row first, then rewrites that entry — two
    writers of one run deadlocked in that opposite order (measured,
    docs/internals/mariadb.md).
    """
    return (
        runs.update()
        .where(fence(leases))
        .with_hint("FORCE INDEX (PRIMARY)", dialect_name="mariadb")
    )


def lock_in_id_order(conn: sa.Connection, leases: Sequence[Lease]) -> None:
    """Lock the rows of ``leases`` in ascending id order, for the rest of the transaction.

    A worker's heartbeat renews the leases it holds while its committer writes
    the outcomes of runs that just ended, on two connections and over the same
    rows. A statement locks rows in the order it reaches them, so two writers
    naming them in different orders deadlock (PostgreSQL and MariaDB then roll
    one back after a second's wait). Taken first, in one order, the locks make
    the second writer queue behind the first. SQLite has one writer at a time
    and no row locks: nothing to do there (SQLAlchemy leaves out ``FOR UPDATE``).
    """
    for chunk in chunks(sorted(lease.run_id for lease in leases)):
        conn.execute(
            sa.select(runs.c.id).where(runs.c.id.in_(chunk)).order_by(runs.c.id).with_for_update()
        ).all()


def status_is(status: RunStatus, table: sa.FromClause = runs) -> sa.ColumnElement[bool]:
    """``table.status = '<status>'`` with the status written out, not bound.

    A planner matches a partial index's predicate (``status = 'running'``) to
    the SQL text: the plan PostgreSQL keeps for a prepared statement whose
    status is a parameter can use no such index (a limited claim's lock
    scanned the whole table that way, on every claim).
    """
    return table.c.status == sa.literal_column(f"'{status.value}'", runs.c.status.type)


def lease_update(run_ids: Any) -> sa.Update:
    """The claim itself: lease the runs of ``run_ids`` (a list or a subquery), one more attempt.

    Parameters ``owner``, ``expires_at`` and ``at``.
    """
    return (
        runs.update()
        .where(runs.c.id.in_(run_ids))
        .values(
            status=RunStatus.RUNNING.value,
            attempt=runs.c.attempt + 1,
            lease_owner=sa.bindparam("owner"),
            lease_token=runs.c.lease_token + 1,
            lease_expires_at=sa.bindparam("expires_at"),
            started_at=sa.bindparam("at"),
            updated_at=sa.bindparam("at"),
        )
    )


def claimed_run(
    row: Any, claimed_at: float = 0.0, claimed_monotonic: float | None = None
) -> ClaimedRun:
    """The run a claim returned as ``row``: its :data:`CLAIMED_COLUMNS` first, in that order.

    Read by position: a claim returns up to a thousand rows at a time, and a
    worker spent more on reading them by name than on the runs' jobs.
    """
    run_id, job, run_key, payload, attempt, max_attempts, lease_token, checkpoint = row[:8]
    return ClaimedRun(
        claimed_at=claimed_at,
        claimed_monotonic=time.monotonic() if claimed_monotonic is None else claimed_monotonic,
        id=run_id,
        job=job,
        run_key=run_key,
        payload=json.loads(payload),  # never NULL: a run's payload is JSON, null included
        attempt=attempt,
        max_attempts=max_attempts,
        lease_token=lease_token,
        checkpoint=None if checkpoint is None else json.loads(checkpoint),
    )
