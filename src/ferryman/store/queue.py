"""The run queue: enqueue, operator actions (requeue, cancel), and reads.

A worker's side of it — claims and the writes fenced by a lease — is in
:mod:`ferryman.store.leases`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import Run, RunEvent, RunEventKind, RunStatus, SubmitResult
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.keys import run_key_digest
from ferryman.store.limits import Limits
from ferryman.store.run_rows import NewRun, chunks, event
from ferryman.store.schema import run_events, runs
from ferryman.store.shared_submits import SharedSubmits

# The statuses an operator can cancel a run in.
CANCELLABLE = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


class RunQueue:
    """The run queue and processing log on one store database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Concurrent submits of this process, one statement for all of them.
        self._shared = SharedSubmits(backend.enqueue_committed, check=backend.check_submitter)
        self._limits = Limits(backend)
        # Jobs whose row in ferryman_job_limits a transaction of this process
        # wrote and committed: no later submit needs to write it again (the rows
        # are never deleted), which spares keyed submits a statement each.
        self._keyed_committed: set[str] = set()

    def now(self, conn: sa.Connection) -> float:
        """The database's clock, which every lease and due time is measured by."""
        return self.backend.clock(conn)

    def enqueue(
        self,
        conn: sa.Connection,
        new_runs: Sequence[NewRun],
        *,
        requested_detail: dict[str, Any] | None = None,
    ) -> SubmitResult:
        """Insert runs, skipping any ``(job, run_key)`` that exists.

        A run's creation is its row (``created_at``); a ``requested`` log row
        is written only to carry ``requested_detail`` (a chained run's parent),
        and :meth:`get_events` shows one for the others.

        Runs inside ``conn``'s transaction: the caller commits (or rolls back)
        the runs together with whatever else it wrote.
        """
        if not new_runs:
            return SubmitResult(run_ids=(), created=0, deduplicated=0)
        unique, in_key_order = _in_key_order(new_runs)
        created = self.backend.enqueue(conn, in_key_order, None)
        ids = self._ids(conn, unique, created)
        keyed = {new.job for new in in_key_order if new.concurrency_key is not None}
        if keyed - self._keyed_committed:
            # Before any claim can see the runs: from now on every claim of
            # these jobs counts the running runs of each key.
            self._limits.mark_keyed(conn, sorted(keyed - self._keyed_committed))
        if created:
            self.backend.wake(conn, {new.job for new in unique.values()})
        if created and requested_detail is not None:
            self._log_requested(conn, [run_id for run_id, _ in created], requested_detail)
        return _submitted(new_runs, ids, len(created))

    def committed(self, new_runs: Sequence[NewRun]) -> None:
        """The transaction that enqueued ``new_runs`` (:meth:`enqueue`) has committed."""
        self._keyed_committed.update(new.job for new in new_runs if new.concurrency_key is not None)

    def enqueue_committed(self, new_runs: Sequence[NewRun]) -> SubmitResult | None:
        """Enqueue in a transaction of the backend's own, committed when this returns.

        One statement (one round trip) where the backend can
        (:meth:`~ferryman.store.dialect.Backend.enqueue_committed`); None
        where it cannot, or when a run has a concurrency key whose job's row in
        ``ferryman_job_limits`` no transaction of this process has committed yet
        (marking the job keyed is a second write in the same transaction): then
        the caller enqueues in a transaction of its own with :meth:`enqueue`.
        """
        if not new_runs:
            return SubmitResult(run_ids=(), created=0, deduplicated=0)
        if not self.backend.enqueues_committed:
            return None
        if len(new_runs) == 1:
            return self._enqueue_one_committed(new_runs[0])
        if not {new.job for new in new_runs if new.concurrency_key is not None}.issubset(
            self._keyed_committed
        ):
            return None  # the job's limits row goes in with the runs, once
        unique, in_key_order = _in_key_order(new_runs)
        created, written = self._shared.submit(in_key_order)
        ids = {digest: written[digest] for digest in unique if digest in written}
        if len(ids) < len(unique):
            # Deduplicated keys: their runs are committed, a read finds them.
            with self.backend.read_engine.connect() as conn:
                ids = self._ids(conn, unique, [(run_id, key) for key, run_id in ids.items()])
        return _submitted(new_runs, ids, len(created))

    def _enqueue_one_committed(self, new: NewRun) -> SubmitResult | None:
        """:meth:`enqueue_committed` of one run, the usual submit, without a batch's sets."""
        if new.concurrency_key is not None and new.job not in self._keyed_committed:
            return None  # the job's limits row goes in with the run, once
        created, written = self._shared.submit((new,))
        run_id = written.get(new.key_digest)
        if run_id is None:
            # A deduplicated key: its run is committed, a read finds it.
            with self.backend.read_engine.connect() as conn:
                run_id = self._ids(conn, {new.key_digest: new}, ())[new.key_digest]
        return SubmitResult(run_ids=(run_id,), created=len(created), deduplicated=1 - len(created))

    @staticmethod
    def _ids(
        conn: sa.Connection, unique: dict[bytes, NewRun], created: Sequence[tuple[int, bytes]]
    ) -> dict[bytes, int]:
        """The run id of each key: those created, and those that existed already."""
        ids = {digest: run_id for run_id, digest in created}
        missing = [digest for digest in unique if digest not in ids]
        for digests in chunks(missing):
            query = sa.select(runs.c.id, runs.c.key_digest).where(
                runs.c.key_digest.in_(list(digests))
            )
            for row in conn.execute(query):
                ids[bytes(row.key_digest)] = row.id
        return ids

    def _log_requested(
        self, conn: sa.Connection, run_ids: Sequence[int], detail: dict[str, Any]
    ) -> None:
        """Log ``requested`` with ``detail`` for runs just created, at their creation."""
        detail_json = records.to_json(detail, "event detail")
        columns = ["run_id", "kind", "at", "attempt", "detail"]
        for chunk in chunks(run_ids):
            created = sa.select(
                runs.c.id,
                sa.literal(RunEventKind.REQUESTED.value),
                runs.c.created_at,
                sa.literal(0),
                sa.literal(detail_json),
            ).where(runs.c.id.in_(list(chunk)))
            conn.execute(run_events.insert().from_select(columns, created.order_by(runs.c.id)))

    # -- operator actions ----------------------------------------------------

    def requeue(
        self,
        conn: sa.Connection,
        *,
        run_ids: Sequence[int] | None = None,
        job: str | None = None,
        statuses: Sequence[RunStatus] = (RunStatus.FAILED, RunStatus.DEAD),
        by: str | None = None,
        since: float | None = None,
    ) -> list[int]:
        """Put failed or dead runs back in the queue with a fresh attempt budget.

        ``since``: only runs that finished within that many seconds. A pruned
        run (no processing log left, see :mod:`ferryman.store.prune`) stays as
        it is: its payload is gone, there is nothing to run it with.
        """
        now = self.now(conn)
        logged = sa.exists().where(run_events.c.run_id == runs.c.id)
        query = runs.update().where(runs.c.status.in_([s.value for s in statuses]), logged)
        if since is not None:
            query = query.where(runs.c.finished_at >= now - since)
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

    def cancel(self, conn: sa.Connection, run_id: int, *, by: str | None = None) -> Run | None:
        """Cancel a queued or running run; the cancelled run, or None if it was neither.

        A running run's lease token is bumped with it, so nothing its worker
        writes afterwards commits (the worker's next heartbeat tells the job).
        """
        for _ in range(3):  # the run may move from queued to running meanwhile
            row = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).first()
            if row is None or row.status not in CANCELLABLE:
                return None
            if self._cancel(conn, runs.c.id == run_id, row.status, by):
                return self.get_run(conn, run_id)
        return None

    def cancel_where(
        self,
        conn: sa.Connection,
        *,
        job: str | None,
        status: RunStatus,
        by: str | None = None,
    ) -> list[int]:
        """Cancel every ``status`` run (queued or running) of ``job`` (or of every job)."""
        if status.value not in CANCELLABLE:
            raise ValueError(f"only queued or running runs can be cancelled, not {status}")
        where = sa.true() if job is None else runs.c.job == job
        return self._cancel(conn, where, status.value, by)

    def _cancel(
        self, conn: sa.Connection, where: sa.ColumnElement[bool], status: str, by: str | None
    ) -> list[int]:
        now = self.now(conn)
        update = (
            runs.update()
            .where(where, runs.c.status == status)
            .values(
                status=RunStatus.CANCELLED.value,
                lease_owner=None,
                lease_expires_at=None,
                lease_token=runs.c.lease_token + 1,
                finished_at=now,
                updated_at=now,
            )
        )
        cancelled = self.backend.update_returning(conn, update, runs.c.id, runs.c.attempt)
        detail = {"by": by, "was": status}
        kind = RunEventKind.CANCELLED
        for chunk in chunks(cancelled):
            conn.execute(
                run_events.insert(),
                [event(r.id, kind, now, r.attempt, by, None, detail) for r in chunk],
            )
        return [r.id for r in cancelled]

    # -- chaining ------------------------------------------------------------

    def enqueue_children(
        self,
        conn: sa.Connection,
        parent: int,
        attempt: int,
        children: Sequence[NewRun],
        worker_id: str | None,
    ) -> SubmitResult:
        """Enqueue the runs a run asked for (``ctx.submit``), with its success, and link them.

        The parent's log gets a ``submitted`` row naming the runs; each run
        created here gets its parent in its ``requested`` row. A run_key that
        already had a run is deduplicated as always (it is named, not created).
        """
        result = self.enqueue(conn, children, requested_detail={"parent_run_id": parent})
        detail = {
            "run_ids": list(result.run_ids),
            "created": result.created,
            "deduplicated": result.deduplicated,
        }
        now = self.now(conn)
        self.backend.log_events(
            conn, [event(parent, RunEventKind.SUBMITTED, now, attempt, worker_id, None, detail)]
        )
        return result

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

    def get_by_key(self, conn: sa.Connection, run_key: str, jobs: Sequence[str]) -> list[Run]:
        """The runs keyed ``run_key`` of any of ``jobs`` (one per job at most), by job name.

        Found through the unique index on the keys' digests (see
        :mod:`ferryman.store.keys`), so keys of any length are one lookup.
        """
        by_digest = {run_key_digest(job, run_key): job for job in jobs}
        found: list[Run] = []
        for digests in chunks(list(by_digest)):
            query = sa.select(runs).where(runs.c.key_digest.in_(list(digests)))
            found.extend(records.run_from_row(row) for row in conn.execute(query).mappings())
        return sorted(found, key=lambda run: run.job)

    def get_events(self, conn: sa.Connection, run_id: int) -> list[RunEvent]:
        """The run's processing log, oldest first, from its ``requested`` event.

        A submit logs nothing (one row fewer per run: a quarter of an
        enqueue's WAL, measured): the run's row says when it was requested,
        so that event is built from it, before every logged row (id 0). A
        ``requested`` row is stored only where it says more (a chained run's
        parent). A pruned run (finished, its log gone) shows no log at all.
        """
        query = sa.select(run_events).where(run_events.c.run_id == run_id).order_by(run_events.c.id)
        logged = [records.run_event_from_row(row) for row in conn.execute(query).mappings()]
        if any(logged_event.kind is RunEventKind.REQUESTED for logged_event in logged):
            return logged
        run = conn.execute(
            sa.select(runs.c.created_at, runs.c.status).where(runs.c.id == run_id)
        ).first()
        if run is None or (not logged and run.status not in CANCELLABLE):
            return logged
        return [records.requested_event(run_id, run.created_at), *logged]

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


def _in_key_order(new_runs: Sequence[NewRun]) -> tuple[dict[bytes, NewRun], list[NewRun]]:
    """The runs by key digest, first of each key; and those in ``(job, run_key)`` order.

    Inserted in key order: two producers submitting overlapping keys in
    different orders would otherwise each wait on the other's unique-index
    entry (a deadlock on PostgreSQL); in one order, one simply waits.
    """
    unique: dict[bytes, NewRun] = {}
    for new in new_runs:
        unique.setdefault(new.key_digest, new)
    if len(unique) == 1:
        return unique, list(unique.values())
    return unique, sorted(unique.values(), key=lambda new: (new.job, new.run_key))


def _submitted(new_runs: Sequence[NewRun], ids: dict[bytes, int], created: int) -> SubmitResult:
    return SubmitResult(
        run_ids=tuple(ids[new.key_digest] for new in new_runs),
        created=created,
        deduplicated=len(new_runs) - created,
    )
