"""SQL for runs and their processing log: enqueue, claim, fenced writes, queries.

Every write a worker makes for a run is *fenced*: it matches the row only
while ``lease_token`` is still the token the worker got when it claimed the
run. A claim (and a release) increments the token, so a worker whose lease
was taken over matches nothing and its write is refused with ``LeaseLost``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from ferryman.errors import LeaseLost
from ferryman.model import Run, RunEvent, RunEventKind, RunStatus, SubmitResult
from ferryman.store import postgres, records, sqlite
from ferryman.store.dialect import Backend
from ferryman.store.keys import run_key_digest
from ferryman.store.notify import notify_jobs
from ferryman.store.schema import run_events, runs

# Rows per statement when a batch is written; keeps every statement well under
# the bound-parameter limits of SQLite (32,766) and PostgreSQL (65,535).
CHUNK = 1000
EVENT_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A run to enqueue. Built only with a key the store can hold exactly
    (:class:`~ferryman.PayloadError` naming it otherwise), so a batch is refused
    before anything is written."""

    job: str
    run_key: str
    payload_json: str
    max_attempts: int
    key_digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        records.checked_key(self.run_key, f"run_key of job {self.job!r}")
        object.__setattr__(self, "key_digest", run_key_digest(self.job, self.run_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A worker's hold on a run: valid while the run's token is still ``token``."""

    run_id: int
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedRun:
    id: int
    job: str
    run_key: str
    payload: Any
    attempt: int
    max_attempts: int
    lease_token: int
    checkpoint: Any

    @property
    def lease(self) -> Lease:
        return Lease(run_id=self.id, token=self.lease_token)


class OutcomeKind(enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"
    FAILED = "failed"
    DEAD = "dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How an attempt ended, to be written fenced by its lease."""

    kind: OutcomeKind
    lease: Lease
    attempt: int
    error: str | None = None
    retry_delay: float = 0.0


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _event(
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


def _error_summary(error: str | None) -> str | None:
    if error is None:
        return None
    first = error.strip().splitlines()[-1] if error.strip() else ""
    return records.clean_text(first[:EVENT_ERROR_CHARS])


def _end_values(outcome: Outcome, now: float) -> dict[str, Any]:
    """A retry is queued again after its delay; a rejection or a death is finished now."""
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


def _outcome_event(outcome: Outcome, now: float, worker_id: str) -> dict[str, Any]:
    detail: dict[str, Any] | None = None
    if outcome.kind is OutcomeKind.RETRY:
        kind = RunEventKind.RETRY_SCHEDULED
        detail = {"delay": round(outcome.retry_delay, 3), "error": _error_summary(outcome.error)}
    elif outcome.kind is OutcomeKind.SUCCEEDED:
        kind = RunEventKind.SUCCEEDED
    else:
        kind = RunEventKind.FAILED if outcome.kind is OutcomeKind.FAILED else RunEventKind.DEAD
        detail = {"error": _error_summary(outcome.error)}
    return _event(
        outcome.lease.run_id, kind, now, outcome.attempt, worker_id, outcome.lease.token, detail
    )


def _lease_update(run_ids: Any) -> sa.Update:
    """The claim itself: lease the runs of ``run_ids`` (a list or a subquery), one more attempt."""
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
        .returning(
            runs.c.id,
            runs.c.job,
            runs.c.run_key,
            runs.c.payload,
            runs.c.attempt,
            runs.c.max_attempts,
            runs.c.lease_token,
            runs.c.checkpoint,
        )
    )


def _claimed_run(row: Any) -> ClaimedRun:
    return ClaimedRun(
        id=row.id,
        job=row.job,
        run_key=row.run_key,
        payload=records.from_json(row.payload),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        lease_token=row.lease_token,
        checkpoint=records.from_json(row.checkpoint),
    )


class RunQueries:
    """The run queue and processing log on one store database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Built once: SQLAlchemy memoises a statement object's cache key, so
        # the hot paths below skip building and keying a statement per call.
        self._now_query = sa.select(backend.now)
        self._expired_query = (
            sa.select(runs.c.id, runs.c.attempt, runs.c.max_attempts, runs.c.lease_owner)
            .where(
                runs.c.status == RunStatus.RUNNING.value,
                runs.c.lease_expires_at < sa.bindparam("now"),
                runs.c.job.in_(sa.bindparam("jobs", expanding=True)),
            )
            .order_by(runs.c.lease_expires_at)
            .limit(sa.bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._lease_runs = _lease_update(sa.bindparam("ids", expanding=True))
        self._sqlite_lease = sqlite.DriverStatement(_lease_update(sqlite.json_list_param("ids")))

    def now(self, conn: sa.Connection) -> float:
        if self.backend.is_sqlite:
            return float(sqlite.NOW.first(conn, {})[0])
        return float(conn.execute(self._now_query).scalar_one())

    def _wake_workers(self, conn: sa.Connection, jobs: Iterable[str]) -> None:
        if not self.backend.is_sqlite:
            notify_jobs(conn, jobs)

    # -- enqueue -------------------------------------------------------------

    def enqueue(self, conn: sa.Connection, new_runs: Sequence[NewRun]) -> SubmitResult:
        """Insert runs, skipping any ``(job, run_key)`` that exists; log ``requested``.

        Runs inside ``conn``'s transaction: the caller commits (or rolls back)
        the runs together with whatever else it wrote.
        """
        if not new_runs:
            return SubmitResult(run_ids=(), created=0, deduplicated=0)
        now = self.now(conn)
        unique: dict[bytes, NewRun] = {}
        for new in new_runs:
            unique.setdefault(new.key_digest, new)
        insert = self._insert_portable if self.backend.is_sqlite else postgres.enqueue
        # Inserted in key order: two producers submitting overlapping keys in
        # different orders would otherwise each wait on the other's unique-index
        # entry (a deadlock on PostgreSQL); in one order, one simply waits.
        in_key_order = sorted(unique.values(), key=lambda new: (new.job, new.run_key))
        ids: dict[bytes, int] = {}
        created: list[int] = []
        for run_id, digest in insert(conn, in_key_order, now):
            ids[digest] = run_id
            created.append(run_id)
        missing = [digest for digest in unique if digest not in ids]
        for digests in _chunks(missing):
            query = sa.select(runs.c.id, runs.c.key_digest).where(
                runs.c.key_digest.in_(list(digests))
            )
            for row in conn.execute(query):
                ids[bytes(row.key_digest)] = row.id
        if created:
            self._wake_workers(conn, {new.job for new in unique.values()})
        return SubmitResult(
            run_ids=tuple(ids[new.key_digest] for new in new_runs),
            created=len(created),
            deduplicated=len(new_runs) - len(created),
        )

    def _insert_portable(
        self, conn: sa.Connection, new_runs: Sequence[NewRun], now: float
    ) -> list[tuple[int, bytes]]:
        """Insert runs not yet present and log ``requested``; return what was created."""
        insert = (
            self.backend.insert(runs)
            .on_conflict_do_nothing(index_elements=["key_digest"])
            .returning(runs.c.id, runs.c.key_digest)
        )
        created: list[tuple[int, bytes]] = []
        for chunk in _chunks(new_runs):
            rows = [
                {
                    "job": new.job,
                    "run_key": new.run_key,
                    "key_digest": new.key_digest,
                    "payload": new.payload_json,
                    "status": RunStatus.QUEUED.value,
                    "attempt": 0,
                    "max_attempts": new.max_attempts,
                    "available_at": now,
                    "lease_token": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for new in chunk
            ]
            created.extend((row.id, bytes(row.key_digest)) for row in conn.execute(insert, rows))
        events = [_event(run_id, RunEventKind.REQUESTED, now, 0) for run_id, _ in created]
        for events_chunk in _chunks(events):
            conn.execute(run_events.insert(), list(events_chunk))
        return created

    # -- claim ---------------------------------------------------------------

    def claim(
        self,
        conn: sa.Connection,
        *,
        worker_id: str,
        jobs: Sequence[str],
        limit: int,
        lease_seconds: float,
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs of ``jobs`` to ``worker_id``.

        Due means queued and available, or running under an expired lease. An
        expired run whose attempts are used up becomes ``dead`` instead of
        being claimed again, so a job that kills its worker cannot loop forever.
        """
        now = self.now(conn)
        expired = self._expired_leases(conn, now=now, jobs=jobs, limit=limit)
        events: list[dict[str, Any]] = []
        to_claim: list[int] = []
        exhausted: list[Any] = []
        for row in expired:
            events.append(
                _event(
                    row.id,
                    RunEventKind.LEASE_EXPIRED,
                    now,
                    row.attempt,
                    detail={"previous_owner": row.lease_owner},
                )
            )
            if row.attempt >= row.max_attempts:
                exhausted.append(row)
                events.append(
                    _event(
                        row.id,
                        RunEventKind.DEAD,
                        now,
                        row.attempt,
                        detail={"error": "lease expired on the last attempt"},
                    )
                )
            else:
                to_claim.append(row.id)
        for row in exhausted:
            conn.execute(
                runs.update()
                .where(runs.c.id == row.id)
                .values(
                    status=RunStatus.DEAD.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    lease_token=runs.c.lease_token + 1,
                    finished_at=now,
                    updated_at=now,
                    last_error=(
                        f"lease expired on attempt {row.attempt} of {row.max_attempts}: the "
                        "worker stopped without finishing (killed, hung or cut off)"
                    ),
                )
            )
        room = limit - len(to_claim)
        due_rows: list[Any] = []
        if room > 0 and not self.backend.is_sqlite:
            due_rows = postgres.claim_due(
                conn,
                worker_id=worker_id,
                jobs=jobs,
                limit=room,
                now=now,
                lease_seconds=lease_seconds,
            )
        elif room > 0:
            # Walk each job's due queue in index order, then keep the oldest.
            candidates: list[tuple[float, int]] = []
            for job in jobs:
                candidates.extend(
                    (available_at, run_id)
                    for run_id, available_at in sqlite.DUE.rows(
                        conn, {"job": job, "now": now, "limit": room}
                    )
                )
            to_claim.extend(run_id for _, run_id in sorted(candidates)[:room])
        claimed: list[ClaimedRun] = []
        result: Iterable[Any] = ()
        if to_claim:
            result = self._lease(
                conn, to_claim, worker_id=worker_id, now=now, lease_seconds=lease_seconds
            )
        for row in result:
            claimed.append(_claimed_run(row))
            events.append(
                _event(row.id, RunEventKind.CLAIMED, now, row.attempt, worker_id, row.lease_token)
            )
        self._log(conn, events)
        order = {run_id: position for position, run_id in enumerate(to_claim)}
        claimed.sort(key=lambda run: order[run.id])
        claimed.extend(_claimed_run(row) for row in due_rows)  # logged by the statement
        return claimed

    def _expired_leases(
        self, conn: sa.Connection, *, now: float, jobs: Sequence[str], limit: int
    ) -> Sequence[Any]:
        if self.backend.is_sqlite:
            return sqlite.EXPIRED.rows(
                conn, {"now": now, "jobs": sqlite.json_list(jobs), "limit": limit}
            )
        return conn.execute(
            self._expired_query, {"now": now, "jobs": list(jobs), "limit": limit}
        ).all()

    def _lease(
        self,
        conn: sa.Connection,
        run_ids: Sequence[int],
        *,
        worker_id: str,
        now: float,
        lease_seconds: float,
    ) -> Iterable[Any]:
        params = {"owner": worker_id, "expires_at": now + lease_seconds, "at": now}
        if self.backend.is_sqlite:
            return self._sqlite_lease.rows(conn, {**params, "ids": sqlite.json_list(run_ids)})
        return conn.execute(self._lease_runs, {**params, "ids": list(run_ids)})

    def _log(self, conn: sa.Connection, events: Sequence[dict[str, Any]]) -> None:
        """Append processing-log rows in the caller's transaction."""
        if not events:
            return
        if self.backend.is_sqlite:
            sqlite.LOG_EVENT.many(conn, events)
        else:
            conn.execute(run_events.insert(), list(events))

    # -- fenced writes -------------------------------------------------------

    def _fence(self, leases: Sequence[Lease]) -> sa.ColumnElement[bool]:
        return sa.and_(
            runs.c.status == RunStatus.RUNNING.value,
            sa.tuple_(runs.c.id, runs.c.lease_token).in_([(le.run_id, le.token) for le in leases]),
        )

    def renew(self, conn: sa.Connection, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        """Extend the given leases; return the ids of runs whose lease was lost."""
        if not leases:
            return set()
        now = self.now(conn)
        kept: set[int] = set()
        for chunk in _chunks(leases, CHUNK // 2):
            kept.update(
                conn.execute(
                    runs.update()
                    .where(self._fence(chunk))
                    .values(lease_expires_at=now + lease_seconds)
                    .returning(runs.c.id)
                ).scalars()
            )
        return {lease.run_id for lease in leases} - kept

    def checkpoint(
        self,
        conn: sa.Connection,
        lease: Lease,
        *,
        attempt: int,
        worker_id: str,
        checkpoint_json: str,
    ) -> None:
        now = self.now(conn)
        matched = conn.execute(
            runs.update()
            .where(self._fence([lease]))
            .values(checkpoint=checkpoint_json, updated_at=now)
        ).rowcount
        if matched != 1:
            raise LeaseLost(lease.run_id, lease.token)
        conn.execute(
            run_events.insert(),
            [_event(lease.run_id, RunEventKind.CHECKPOINTED, now, attempt, worker_id, lease.token)],
        )

    def succeed_within(
        self, conn: sa.Connection, lease: Lease, *, attempt: int, worker_id: str
    ) -> None:
        """Write the run's success inside the caller's transaction, or raise LeaseLost."""
        if not self.backend.is_sqlite:
            if not postgres.succeed_one(
                conn, lease.run_id, lease.token, attempt=attempt, worker_id=worker_id
            ):
                raise LeaseLost(lease.run_id, lease.token)
            return
        row = sqlite.SUCCEED.first(conn, {"run_id": lease.run_id, "token": lease.token})
        if row is None:
            raise LeaseLost(lease.run_id, lease.token)
        sqlite.LOG_EVENT.many(
            conn,
            [_event(lease.run_id, RunEventKind.SUCCEEDED, row[0], attempt, worker_id, lease.token)],
        )

    def finish(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], *, worker_id: str
    ) -> list[bool]:
        """Write how attempts ended, each fenced by its lease.

        Returns, per outcome, whether it was accepted (False: the lease was
        lost and the run belongs to someone else now). Acceptance is per
        lease, not per run: a batch can hold the outcome of a stale lease
        next to the current lease's outcome for the same run (a worker that
        took its own lapsed run over), and only the current one counts.
        """
        now = self.now(conn)
        if self.backend.is_sqlite:
            accepted = self._finish_each_sqlite(conn, outcomes, now)
            logged: set[Lease] = set()
        else:
            accepted, logged = self._finish_postgres(conn, outcomes, worker_id, now)
        self._log(
            conn,
            [
                _outcome_event(outcome, now, worker_id)
                for outcome in outcomes
                if outcome.lease in accepted and outcome.lease not in logged
            ],
        )
        return [outcome.lease in accepted for outcome in outcomes]

    def _finish_each_sqlite(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], now: float
    ) -> set[Lease]:
        """One fenced UPDATE per outcome: microseconds each on the driver."""
        accepted: set[Lease] = set()
        for outcome in outcomes:
            fence = {"run_id": outcome.lease.run_id, "token": outcome.lease.token}
            if outcome.kind is OutcomeKind.SUCCEEDED:
                row = sqlite.SUCCEED.first(conn, fence)
            else:
                row = sqlite.END.first(conn, {**fence, **_end_values(outcome, now)})
            if row is not None:
                accepted.add(outcome.lease)
        return accepted

    def _finish_postgres(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], worker_id: str, now: float
    ) -> tuple[set[Lease], set[Lease]]:
        """Successes in one statement that logs them too; then the others one by one."""
        successes = [o.lease for o in outcomes if o.kind is OutcomeKind.SUCCEEDED]
        accepted: set[Lease] = set()
        if successes:
            accepted = {
                Lease(run_id=run_id, token=token)
                for run_id, token in postgres.succeed(
                    conn, [(le.run_id, le.token) for le in successes], worker_id=worker_id, now=now
                )
            }
        logged = set(accepted)  # the statement wrote their events
        for outcome in outcomes:
            if outcome.kind is OutcomeKind.SUCCEEDED:
                continue
            values = _end_values(outcome, now)
            changes: dict[str, Any] = {
                "status": values["status"],
                "last_error": values["error"],
                "lease_owner": None,
                "lease_expires_at": None,
                "updated_at": now,
            }
            for column in ("available_at", "finished_at"):
                if values[column] is not None:
                    changes[column] = values[column]
            matched = conn.execute(
                runs.update().where(self._fence([outcome.lease])).values(**changes)
            ).rowcount
            if matched == 1:
                accepted.add(outcome.lease)
        return accepted, logged

    def release(
        self, conn: sa.Connection, leases: Sequence[Lease], *, worker_id: str, reason: str
    ) -> list[int]:
        """Give runs back to the queue without using up an attempt."""
        if not leases:
            return []
        now = self.now(conn)
        released = conn.execute(
            runs.update()
            .where(self._fence(leases))
            .values(
                status=RunStatus.QUEUED.value,
                attempt=runs.c.attempt - 1,
                lease_owner=None,
                lease_expires_at=None,
                lease_token=runs.c.lease_token + 1,
                available_at=now,
                updated_at=now,
            )
            .returning(runs.c.id, runs.c.attempt, runs.c.job)
        ).all()
        self._wake_workers(conn, {r.job for r in released})
        if released:
            conn.execute(
                run_events.insert(),
                [
                    _event(
                        r.id,
                        RunEventKind.RELEASED,
                        now,
                        r.attempt,
                        worker_id,
                        None,
                        {"reason": reason},
                    )
                    for r in released
                ],
            )
        return [r.id for r in released]

    def leased_to(self, conn: sa.Connection, worker_id: str) -> list[Lease]:
        """The leases ``worker_id`` holds on running runs, as the store sees them."""
        rows = conn.execute(
            sa.select(runs.c.id, runs.c.lease_token).where(
                runs.c.status == RunStatus.RUNNING.value, runs.c.lease_owner == worker_id
            )
        )
        return [Lease(run_id=row.id, token=row.lease_token) for row in rows]

    # -- operator actions ----------------------------------------------------

    def requeue(
        self,
        conn: sa.Connection,
        *,
        run_ids: Sequence[int] | None = None,
        job: str | None = None,
        statuses: Sequence[RunStatus] = (RunStatus.FAILED, RunStatus.DEAD),
        by: str | None = None,
    ) -> list[int]:
        """Put failed or dead runs back in the queue with a fresh attempt budget."""
        now = self.now(conn)
        query = runs.update().where(runs.c.status.in_([s.value for s in statuses]))
        if run_ids is not None:
            query = query.where(runs.c.id.in_(list(run_ids)))
        if job is not None:
            query = query.where(runs.c.job == job)
        requeued = conn.execute(
            query.values(
                status=RunStatus.QUEUED.value,
                attempt=0,
                available_at=now,
                finished_at=None,
                updated_at=now,
            ).returning(runs.c.id, runs.c.job)
        ).all()
        self._wake_workers(conn, {row.job for row in requeued})
        ids = [row.id for row in requeued]
        for chunk in _chunks(ids):
            conn.execute(
                run_events.insert(),
                [_event(rid, RunEventKind.REQUEUED, now, 0, by) for rid in chunk],
            )
        return ids

    def cancel(self, conn: sa.Connection, run_id: int, *, by: str | None = None) -> bool:
        """Cancel a queued run. Returns False if it was not queued."""
        now = self.now(conn)
        row = conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.CANCELLED.value, finished_at=now, updated_at=now)
            .returning(runs.c.attempt)
        ).first()
        if row is None:
            return False
        conn.execute(
            run_events.insert(), [_event(run_id, RunEventKind.CANCELLED, now, row.attempt, by)]
        )
        return True

    # -- reads ---------------------------------------------------------------

    def get_runs(
        self,
        conn: sa.Connection,
        *,
        job: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
        before_id: int | None = None,
    ) -> list[Run]:
        query = sa.select(runs).order_by(runs.c.id.desc() if limit else runs.c.id)
        if job is not None:
            query = query.where(runs.c.job == job)
        if status is not None:
            query = query.where(runs.c.status == RunStatus(status).value)
        if before_id is not None:
            query = query.where(runs.c.id < before_id)
        if limit is not None:
            query = query.limit(limit)
        return [records.run_from_row(row) for row in conn.execute(query).mappings()]

    def get_run(self, conn: sa.Connection, run_id: int) -> Run | None:
        row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        return None if row is None else records.run_from_row(row)

    def get_events(self, conn: sa.Connection, run_id: int) -> list[RunEvent]:
        query = sa.select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
        return [records.run_event_from_row(row) for row in conn.execute(query).mappings()]

    def counts(self, conn: sa.Connection) -> dict[str, dict[RunStatus, int]]:
        rows = conn.execute(
            sa.select(runs.c.job, runs.c.status, sa.func.count()).group_by(
                runs.c.job, runs.c.status
            )
        )
        counts: dict[str, dict[RunStatus, int]] = {}
        for job, status, count in rows:
            counts.setdefault(job, {})[RunStatus(status)] = count
        return counts

    def oldest_due(self, conn: sa.Connection) -> dict[str, float]:
        """Seconds the oldest due queued run of each job has waited."""
        now = self.now(conn)
        rows = conn.execute(
            sa.select(runs.c.job, sa.func.min(runs.c.available_at))
            .where(runs.c.status == RunStatus.QUEUED.value, runs.c.available_at <= now)
            .group_by(runs.c.job)
        )
        return {job: max(0.0, now - oldest) for job, oldest in rows}
