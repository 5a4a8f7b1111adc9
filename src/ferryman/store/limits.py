"""Claims of limited jobs: concurrency, per-key concurrency and rate, enforced in the store.

A job is *limited* when its definition sets ``concurrency`` or ``rate``, or
when any of its runs was enqueued with a ``concurrency_key`` (its row in
``ferryman_job_limits`` then exists). Its claims do not take the plain path
of the backend: each one

1. locks the job's row in ``ferryman_job_limits`` (PostgreSQL and MariaDB;
   SQLite's write transactions already run one at a time), so that claims of
   the job count the running runs one after another, each seeing the runs the
   one before it committed;
2. counts what runs: ``status = 'running'`` includes a run whose lease
   expired, so the slot of a dead worker is freed only when its run is taken
   over (and is then the taker's), never while a zombie may still run it;
3. refills the rate bucket by the database's clock, read once the lock is
   held, and takes tokens from it;
4. leases the due runs it admits in the same transaction, skipping any
   another transaction holds (an operator's cancel, say).

A takeover of an expired lease neither needs a slot (the run held one all
along) nor a token (its claim took one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ferryman.model import Rate, RunStatus
from ferryman.store.dialect import Backend
from ferryman.store.schema import job_limits, runs

# Due runs read per page while looking for runs whose key has room; pages are
# read until the claim is full or these many pages were read.
PAGE_SLACK = 32
MAX_PAGES = 8


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

_running = runs.alias("running")
# Running runs of the candidate's job sharing its key.
_key_running = (
    sa.select(sa.func.count())
    .select_from(_running)
    .where(
        _running.c.job == runs.c.job,
        _running.c.status == RunStatus.RUNNING.value,
        _running.c.concurrency_digest == runs.c.concurrency_digest,
    )
    .scalar_subquery()
)


class Limits:
    """The limited claims of one store database (see the module)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._known = sa.select(job_limits.c.job).where(
            job_limits.c.job.in_(sa.bindparam("jobs", expanding=True))
        )
        self._lock = (
            sa.select(job_limits.c.tokens, job_limits.c.refilled_at)
            .where(job_limits.c.job == sa.bindparam("job"))
            .with_for_update()
        )
        self._count_running = sa.select(sa.func.count()).where(
            runs.c.job == sa.bindparam("job"), runs.c.status == RunStatus.RUNNING.value
        )
        self._due = (
            sa.select(runs.c.id, runs.c.concurrency_digest, _key_running.label("key_running"))
            .where(
                runs.c.job == sa.bindparam("job"),
                runs.c.status == RunStatus.QUEUED.value,
                runs.c.available_at <= sa.bindparam("now"),
                sa.or_(
                    runs.c.concurrency_digest.is_(None),
                    _key_running < sa.bindparam("key_concurrency"),
                ),
            )
            .order_by(runs.c.priority.desc(), runs.c.available_at, runs.c.id)
            .limit(sa.bindparam("limit"))
            .offset(sa.bindparam("offset"))
        )

    def limited_jobs(
        self, conn: sa.Connection, jobs: Sequence[str], limits: Mapping[str, JobLimits]
    ) -> list[str]:
        """The jobs among ``jobs`` whose claims take the limited path, in ``jobs``' order."""
        limited = {job for job in jobs if limits.get(job, NO_LIMITS).limited}
        others = [job for job in jobs if job not in limited]
        if others:
            limited.update(conn.execute(self._known, {"jobs": others}).scalars())
        return [job for job in jobs if job in limited]

    def mark_keyed(self, conn: sa.Connection, jobs: Sequence[str]) -> None:
        """Give ``jobs`` their row (if absent): their claims take the limited path from now on."""
        rows = [{"job": job, "tokens": None, "refilled_at": None} for job in sorted(set(jobs))]
        if rows:
            self.backend.insert_absent(conn, job_limits, rows, unique=["job"])

    def admit(
        self, conn: sa.Connection, job: str, limits: JobLimits, *, room: int, now: float
    ) -> tuple[list[int], float]:
        """The ids of up to ``room`` due runs of ``job`` its limits admit; the claim's time.

        Also charges the rate bucket for them: the caller leases them in this
        transaction (:meth:`Backend.lease_queued`), at the time returned.
        That time is read after the running runs were counted: a run whose
        end the count saw ended earlier by the same clock, so the processing
        log never shows two runs in one slot at once.
        """
        bucket = self._lock_job(conn, job)
        # Read again once the lock is held: claims of the job then see the
        # clock in the order they refill the bucket, never one going back.
        # (One writer at a time, as on SQLite: the transaction was the lock.)
        one_writer = self.backend.ids_in_commit_order
        now = now if one_writer else self.backend.clock(conn)
        tokens = self._tokens(bucket, limits.rate, now)
        if tokens is not None:
            room = min(room, math.floor(tokens))
        if limits.concurrency is not None and room > 0:
            running = conn.execute(self._count_running, {"job": job}).scalar_one()
            room = min(room, limits.concurrency - running)
        admitted = self._pick(conn, job, limits.key_concurrency, room, now) if room > 0 else []
        if tokens is not None:
            self.charge(conn, job, tokens - len(admitted), now)
        return admitted, self.backend.clock(conn) if admitted and not one_writer else now

    def charge(self, conn: sa.Connection, job: str, tokens: float, now: float) -> None:
        conn.execute(
            job_limits.update()
            .where(job_limits.c.job == job)
            .values(tokens=tokens, refilled_at=now)
        )

    def _lock_job(self, conn: sa.Connection, job: str) -> Any:
        """Lock the job's row, made first if absent; its rate bucket as it stands."""
        row = conn.execute(self._lock, {"job": job}).first()
        if row is None:
            self.mark_keyed(conn, [job])
            row = conn.execute(self._lock, {"job": job}).one()
        return row

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
    ) -> list[int]:
        """Due runs in claim order whose key has room, counting those picked."""
        picked: list[int] = []
        taken: dict[bytes, int] = {}
        page = room + PAGE_SLACK
        for number in range(MAX_PAGES):
            params = {
                "job": job,
                "now": now,
                "key_concurrency": key_concurrency,
                "limit": page,
                "offset": number * page,
            }
            rows = conn.execute(self._due, params).all()
            admitted: list[int] = []
            for row in rows:
                if len(picked) + len(admitted) >= room:
                    break
                digest = None if row.concurrency_digest is None else bytes(row.concurrency_digest)
                if digest is not None:
                    if row.key_running + taken.get(digest, 0) >= key_concurrency:
                        continue
                    taken[digest] = taken.get(digest, 0) + 1
                admitted.append(row.id)
            picked.extend(admitted)
            if len(picked) >= room or len(rows) < page:
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
