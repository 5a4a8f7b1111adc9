"""A worker's side of the run queue: claim, renew, checkpoint, finish, release.

Every write here is fenced by the lease it holds
(:func:`~ferryman.store.run_rows.fence`): a worker whose lease was taken over
matches nothing, and its write is refused with ``LeaseLost``. The statements
that differ between databases are the backend's
(:class:`~ferryman.store.dialect.Backend`: ``claim``, ``lease``, ``finish``,
``succeed_within``); what they share is here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from ferryman.errors import LeaseLost
from ferryman.model import RunEventKind, RunStatus
from ferryman.store import records
from ferryman.store.dialect import Backend, ClaimRequest
from ferryman.store.limits import NO_LIMITS, JobLimits, Limits, limits_of
from ferryman.store.run_rows import (
    CHUNK,
    ClaimedRun,
    Lease,
    Outcome,
    OutcomeKind,
    chunks,
    claimed_run,
    end_values,
    event,
    fenced_update,
    lock_in_id_order,
    outcome_event,
)
from ferryman.store.schema import runs


class Leases:
    """The leases workers hold on runs, on one store database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.limits = Limits(backend)

    def claim(
        self,
        conn: sa.Connection,
        *,
        worker_id: str,
        jobs: Sequence[str] | Mapping[str, Any],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs of ``jobs`` to ``worker_id``.

        Due means queued and available, or running under an expired lease. An
        expired run whose attempts are used up becomes ``dead`` instead of
        being claimed again, so a job that kills its worker cannot loop forever.
        Higher priorities first, then by due time, then by id. ``jobs`` may be
        the job definitions by name, whose limits then apply. Jobs with
        ``limits`` (or runs with concurrency keys) are claimed within them
        (:mod:`ferryman.store.limits`); the others by the backend's plain claim.
        """
        if isinstance(jobs, Mapping):  # job definitions, by name: their limits
            limits = limits_of(jobs)
        jobs = list(jobs)
        limits = limits or {}
        locked = self.limits.lock_limited(conn, jobs, limits)
        limited = locked.jobs
        now = self.backend.clock(conn) if locked.now is None else locked.now
        expired = (
            self.backend.expired_leases(conn, now=now, jobs=jobs, limit=limit)
            if locked.expired
            else ()
        )
        reclaim, events = self._settle_expired(conn, expired, now)
        plain = [job for job in jobs if job not in limited] if limited else jobs
        request = ClaimRequest(
            worker_id=worker_id,
            jobs=plain,
            room=limit - len(reclaim) if plain else 0,
            reclaim=reclaim,
            now=now,
            lease_seconds=lease_seconds,
            events=events,
        )
        claimed = [(row, now) for row in self.backend.claim(conn, request)]
        for job in limited:
            room = limit - len(claimed)  # the reclaimed runs are among them
            if room <= 0:
                break
            more = replace(request, jobs=(job,), room=room, reclaim=(), events=())
            bucket = locked.buckets[job]
            claimed.extend(self.limits.claim(conn, job, limits.get(job, NO_LIMITS), more, bucket))
        returned = time.monotonic()  # one reading for the batch: see ClaimedRun
        return [claimed_run(row, at, returned) for row, at in claimed]

    def claim_committed(
        self,
        *,
        worker_id: str,
        jobs: Sequence[str] | Mapping[str, Any],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[ClaimedRun] | None:
        """:meth:`claim` as one statement that commits on its own, where it can be.

        That is where the backend has one (PostgreSQL) and no job of ``jobs``
        has limits, and as long as no lease of theirs has expired: the runs
        are then leased and logged as :meth:`claim` would. None otherwise:
        the caller then claims in a transaction (:meth:`claim`).
        """
        if not self.backend.commits_alone:
            return None
        if isinstance(jobs, Mapping):  # job definitions, by name: their limits
            limits = limits_of(jobs)
        if limits and any(limits.get(job, NO_LIMITS).limited for job in jobs):
            return None
        answer = self.backend.claim_committed(
            worker_id=worker_id, jobs=list(jobs), limit=limit, lease_seconds=lease_seconds
        )
        if answer is None:
            return None
        rows, now = answer
        returned = time.monotonic()  # one reading for the batch: see ClaimedRun
        return [claimed_run(row, now, returned) for row in rows]

    def _settle_expired(
        self, conn: sa.Connection, expired: Sequence[Any], now: float
    ) -> tuple[list[int], list[dict[str, Any]]]:
        """Runs to claim again, and the log of their expiry; a run out of attempts dies."""
        events: list[dict[str, Any]] = []
        reclaim: list[int] = []
        for row in expired:
            previous = {"previous_owner": row.lease_owner}
            events.append(
                event(row.id, RunEventKind.LEASE_EXPIRED, now, row.attempt, detail=previous)
            )
            if row.attempt < row.max_attempts:
                reclaim.append(row.id)
                continue
            last = {"error": "lease expired on the last attempt"}
            events.append(event(row.id, RunEventKind.DEAD, now, row.attempt, detail=last))
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
        return reclaim, events

    def renew(self, conn: sa.Connection, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        """Extend the given leases; return the ids of runs whose lease was lost."""
        if not leases:
            return set()
        now = self.backend.clock(conn)
        lock_in_id_order(conn, leases)
        kept: set[int] = set()
        for chunk in chunks(leases, CHUNK // 2):
            update = fenced_update(chunk).values(lease_expires_at=now + lease_seconds)
            kept.update(row.id for row in self.backend.update_returning(conn, update, runs.c.id))
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
        self.backend.refuse_oversized(conn, checkpoint_json, f"checkpoint of run {lease.run_id}")
        now = self.backend.clock(conn)
        matched = conn.execute(
            fenced_update([lease]).values(checkpoint=checkpoint_json, updated_at=now)
        ).rowcount
        if matched != 1:
            raise LeaseLost(lease.run_id, lease.token)
        self.backend.log_events(
            conn,
            [event(lease.run_id, RunEventKind.CHECKPOINTED, now, attempt, worker_id, lease.token)],
        )

    def succeed_within(
        self, conn: sa.Connection, lease: Lease, *, attempt: int, worker_id: str
    ) -> None:
        """Write the run's success inside the caller's transaction, or raise LeaseLost."""
        if not self.backend.succeed_within(conn, lease, attempt=attempt, worker_id=worker_id):
            raise LeaseLost(lease.run_id, lease.token)

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
        now = self.backend.clock(conn)
        # In id order, as the heartbeat renews: see run_rows.lock_in_id_order.
        in_order = sorted(outcomes, key=lambda outcome: outcome.lease.run_id)
        accepted, logged = self.backend.finish(conn, in_order, worker_id=worker_id, now=now)
        if len(logged) < len(accepted):  # logged is a subset of accepted
            self.backend.log_events(
                conn,
                [
                    outcome_event(outcome, now, worker_id)
                    for outcome in outcomes
                    if outcome.lease in accepted and outcome.lease not in logged
                ],
            )
        return [outcome.lease in accepted for outcome in outcomes]

    def finish_committed(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[bool] | None:
        """:meth:`finish` as one statement that commits on its own, where it can be.

        That is for successes that asked for no runs, where the backend has
        such a statement (PostgreSQL). None otherwise: the caller then
        finishes in a transaction.
        """
        if not self.backend.commits_alone or any(
            o.kind is not OutcomeKind.SUCCEEDED or o.children for o in outcomes
        ):
            return None
        # In id order, as the heartbeat renews: see run_rows.lock_in_id_order.
        leases = sorted((outcome.lease for outcome in outcomes), key=lambda lease: lease.run_id)
        accepted = self.backend.succeed_committed(leases, worker_id=worker_id)
        if accepted is None:
            return None
        return [outcome.lease in accepted for outcome in outcomes]

    def time_out(
        self, conn: sa.Connection, outcome: Outcome, *, timeout: float, worker_id: str
    ) -> bool:
        """End an attempt that outlived its timeout (a retry or a death), fenced by its lease.

        The lease token is bumped with it: the job may still be running, and
        nothing it writes afterwards may commit. Its log row (``retry_scheduled``
        or ``dead``) says ``timeout`` in its detail. False if the lease was lost.
        """
        now = self.backend.clock(conn)
        values = end_values(outcome, now)
        changes: dict[str, Any] = {
            "status": values["status"],
            "last_error": values["error"],
            "lease_owner": None,
            "lease_expires_at": None,
            "lease_token": runs.c.lease_token + 1,
            "updated_at": now,
        }
        for column in ("available_at", "finished_at"):
            if values[column] is not None:
                changes[column] = values[column]
        update = fenced_update([outcome.lease]).values(**changes)
        ended = self.backend.update_returning(conn, update, runs.c.job)
        if not ended:
            return False
        self.backend.wake(conn, {row.job for row in ended})
        logged = outcome_event(outcome, now, worker_id)
        detail = {**records.from_json(logged["detail"]), "timeout": timeout}
        logged["detail"] = records.to_json(detail, "event detail")
        self.backend.log_events(conn, [logged])
        return True

    def release(
        self, conn: sa.Connection, leases: Sequence[Lease], *, worker_id: str, reason: str
    ) -> list[int]:
        """Give runs back to the queue without using up an attempt."""
        if not leases:
            return []
        now = self.backend.clock(conn)
        update = fenced_update(leases).values(
            status=RunStatus.QUEUED.value,
            attempt=runs.c.attempt - 1,
            lease_owner=None,
            lease_expires_at=None,
            lease_token=runs.c.lease_token + 1,
            available_at=now,
            updated_at=now,
        )
        released = self.backend.update_returning(
            conn, update, runs.c.id, runs.c.attempt, runs.c.job
        )
        self.backend.wake(conn, {r.job for r in released})
        detail = {"reason": reason}
        self.backend.log_events(
            conn,
            [
                event(r.id, RunEventKind.RELEASED, now, r.attempt, worker_id, None, detail)
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
