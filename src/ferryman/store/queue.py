"""The run queue: enqueue, operator actions (requeue, cancel), and reads.

A worker's side of it — claims and the writes fenced by a lease — is in
:mod:`ferryman.store.leases`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from ferryman.model import Run, RunEvent, RunEventKind, RunStatus, SubmitResult
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.run_rows import NewRun, chunks, event
from ferryman.store.schema import run_events, runs


class RunQueue:
    """The run queue and processing log on one store database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def now(self, conn: sa.Connection) -> float:
        """The database's clock, which every lease and due time is measured by."""
        return self.backend.clock(conn)

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
        # Inserted in key order: two producers submitting overlapping keys in
        # different orders would otherwise each wait on the other's unique-index
        # entry (a deadlock on PostgreSQL); in one order, one simply waits.
        in_key_order = sorted(unique.values(), key=lambda new: (new.job, new.run_key))
        ids: dict[bytes, int] = {}
        created: list[int] = []
        for run_id, digest in self.backend.enqueue(conn, in_key_order, now):
            ids[digest] = run_id
            created.append(run_id)
        missing = [digest for digest in unique if digest not in ids]
        for digests in chunks(missing):
            query = sa.select(runs.c.id, runs.c.key_digest).where(
                runs.c.key_digest.in_(list(digests))
            )
            for row in conn.execute(query):
                ids[bytes(row.key_digest)] = row.id
        if created:
            self.backend.wake(conn, {new.job for new in unique.values()})
        return SubmitResult(
            run_ids=tuple(ids[new.key_digest] for new in new_runs),
            created=len(created),
            deduplicated=len(new_runs) - len(created),
        )

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
        """Put failed or dead runs back in the queue with a fresh attempt budget.

        A pruned run (no processing log left, see :mod:`ferryman.store.prune`)
        stays as it is: its payload is gone, there is nothing to run it with.
        """
        now = self.now(conn)
        logged = sa.exists().where(run_events.c.run_id == runs.c.id)
        query = runs.update().where(runs.c.status.in_([s.value for s in statuses]), logged)
        if run_ids is not None:
            query = query.where(runs.c.id.in_(list(run_ids)))
        if job is not None:
            query = query.where(runs.c.job == job)
        query = query.values(
            status=RunStatus.QUEUED.value,
            attempt=0,
            available_at=now,
            finished_at=None,
            updated_at=now,
        )
        requeued = self.backend.update_returning(conn, query, runs.c.id, runs.c.job)
        self.backend.wake(conn, {row.job for row in requeued})
        ids = [row.id for row in requeued]
        for chunk in chunks(ids):
            conn.execute(
                run_events.insert(),
                [event(rid, RunEventKind.REQUEUED, now, 0, by) for rid in chunk],
            )
        return ids

    def cancel(self, conn: sa.Connection, run_id: int, *, by: str | None = None) -> bool:
        """Cancel a queued run. Returns False if it was not queued."""
        now = self.now(conn)
        update = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == RunStatus.QUEUED.value)
            .values(status=RunStatus.CANCELLED.value, finished_at=now, updated_at=now)
        )
        cancelled = self.backend.update_returning(conn, update, runs.c.attempt)
        if not cancelled:
            return False
        conn.execute(
            run_events.insert(),
            [event(run_id, RunEventKind.CANCELLED, now, cancelled[0].attempt, by)],
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
