"""SQL for sensors: their durable state and their evaluation history.

A sensor's row holds its cursor, its ``state_version``, its status and its
schedule. Every change that stands for an evaluation — a poll evaluation's new
cursor, a failure's backoff, an operator's ``set_cursor`` — is a
compare-and-swap on ``state_version``::

    UPDATE ferryman_sensors SET cursor = ?, state_version = state_version + 1, ...
    WHERE name = ? AND state_version = ?

made in the same transaction as the runs it stands for and its evaluation
row. An evaluator whose swap matches no row lost the race: it writes a
``conflict`` evaluation and nothing else.

A push message is recorded once per ``(sensor, message_id)`` in
``ferryman_push_deliveries``, unique by the sensor and the digest of the id
(:mod:`ferryman.store.keys`), in the transaction that writes its runs and
its evaluation. Deliveries are forgotten by age (``prune_deliveries``), not
with the evaluation history; an evaluation is kept as long as its delivery.
Many messages of one sensor at once (a broker source's batch) are committed
by :mod:`ferryman.store.push_batches`, under the same rules.

Cursors are stored as the text the sensors layer encodes
(:mod:`ferryman.sensors.cursor`); this module never looks inside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ferryman.model import Evaluation, EvaluationOutcome, SensorState, SensorStatus
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.keys import message_digest
from ferryman.store.queue import RunQueue
from ferryman.store.run_rows import NewRun
from ferryman.store.schema import push_deliveries, sensor_evaluations, sensors

RUNNING = SensorStatus.RUNNING
PAUSED = SensorStatus.PAUSED


@dataclass(frozen=True, slots=True, kw_only=True)
class PollCommit:
    """A poll evaluation's result, to be committed if ``state_version`` is still current."""

    sensor: str
    state_version: int  # the version the evaluation read
    cursor_before: str | None  # stored (encoded) cursors
    cursor_after: str | None
    new_runs: Sequence[NewRun]
    skipped: int
    started_at: float
    next_delay: float  # seconds until the next evaluation is due
    evaluator: str
    skip_reasons: str | None = None  # why run requests were refused, kept as the error


@dataclass(frozen=True, slots=True, kw_only=True)
class PollFailure:
    """A failed poll evaluation: the cursor stays, the next evaluation backs off."""

    sensor: str
    state_version: int
    cursor_before: str | None
    error: str
    started_at: float
    failures: int  # consecutive failures, this one included
    next_delay: float
    evaluator: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PushCommit:
    """A push evaluation: its runs, recorded once per ``(sensor, message_id)``."""

    sensor: str
    message_id: str
    new_runs: Sequence[NewRun]
    skipped: int
    started_at: float
    evaluator: str
    skip_reasons: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PushFailure:
    """A failed push evaluation: recorded, but not as a delivery."""

    sensor: str
    message_id: str
    error: str
    started_at: float
    evaluator: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleEntry:
    name: str
    status: SensorStatus
    next_evaluation_at: float | None

    def due(self, now: float) -> bool:
        """Running, and never evaluated or its next evaluation time has come."""
        return self.status == RUNNING and (
            self.next_evaluation_at is None or self.next_evaluation_at <= now
        )


class SensorQueries:
    """Sensor state and evaluation history on one store database."""

    def __init__(self, backend: Backend, runs: RunQueue) -> None:
        self.backend = backend
        self.runs = runs
        self.now = runs.now  # the database's clock: one reading of it for all the store

    # -- state ---------------------------------------------------------------

    def ensure(self, conn: sa.Connection, declared: Sequence[tuple[str, str]]) -> None:
        """Create the rows of sensors that have none yet: due at once, no cursor."""
        if not declared:
            return
        now = self.now(conn)
        rows = [{"name": name, "kind": kind, "updated_at": now} for name, kind in declared]
        self.backend.insert_absent(conn, sensors, rows, unique=["name"])

    def state_query(self) -> sa.Select[tuple[object, ...]]:
        # Push evaluations do not touch the sensor's row (so that concurrent
        # deliveries never wait on one another); their last time is the newest
        # evaluation's.
        newest = (
            sa.select(sensor_evaluations.c.finished_at)
            .where(sensor_evaluations.c.sensor == sensors.c.name)
            .order_by(sensor_evaluations.c.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        last = sa.case((sensors.c.kind == "push", newest), else_=sensors.c.last_evaluation_at)
        columns = [c for c in sensors.c if c.name != "last_evaluation_at"]
        return sa.select(*columns, last.label("last_evaluation_at"))

    def state(self, conn: sa.Connection, name: str) -> SensorState | None:
        row = conn.execute(self.state_query().where(sensors.c.name == name)).mappings().first()
        return None if row is None else records.sensor_from_row(row)

    def states(self, conn: sa.Connection) -> list[SensorState]:
        query = self.state_query().order_by(sensors.c.name)
        return [records.sensor_from_row(row) for row in conn.execute(query).mappings()]

    def schedule(
        self, conn: sa.Connection, names: Sequence[str]
    ) -> tuple[float, list[ScheduleEntry]]:
        """The database's clock now, and when each named sensor is next due."""
        now = self.now(conn)
        rows = conn.execute(
            sa.select(sensors.c.name, sensors.c.status, sensors.c.next_evaluation_at).where(
                sensors.c.name.in_(list(names))
            )
        )
        return now, [
            ScheduleEntry(
                name=row.name,
                status=SensorStatus(row.status),
                next_evaluation_at=row.next_evaluation_at,
            )
            for row in rows
        ]

    def set_status(
        self, conn: sa.Connection, name: str, status: SensorStatus
    ) -> SensorState | None:
        """Pause or resume; resuming makes the sensor due at once. ``state_version`` is
        kept: an evaluation already under way still commits (its runs and cursor
        belong together)."""
        now = self.now(conn)
        values: dict[str, object] = {"status": status.value, "updated_at": now}
        if status == RUNNING:
            values["next_evaluation_at"] = now
        matched = conn.execute(
            sensors.update().where(sensors.c.name == name).values(**values)
        ).rowcount
        return self.state(conn, name) if matched else None

    # -- poll evaluations ----------------------------------------------------

    def _swap(self, conn: sa.Connection, name: str, state_version: int, **values: object) -> bool:
        """The compare-and-swap: True if ``state_version`` was current and is now one more."""
        won = conn.execute(
            sensors.update()
            .where(sensors.c.name == name, sensors.c.state_version == state_version)
            .values(state_version=sensors.c.state_version + 1, **values)
        ).rowcount
        return bool(won == 1)

    def commit_poll(self, conn: sa.Connection, commit: PollCommit) -> Evaluation:
        """Advance the cursor and insert the runs it stands for, or record a conflict.

        The swap comes first: on PostgreSQL it locks the sensor's row, so a
        concurrent evaluator waits, then finds the version moved and writes
        only its ``conflict`` row; the runs are inserted by the winner alone.
        """
        now = self.now(conn)
        won = self._swap(
            conn,
            commit.sensor,
            commit.state_version,
            cursor=commit.cursor_after,
            consecutive_failures=0,
            next_evaluation_at=now + commit.next_delay,
            last_evaluation_at=now,
            updated_at=now,
        )
        base = {
            "sensor": commit.sensor,
            "cursor_before": commit.cursor_before,
            "state_version_before": commit.state_version,
            "items_skipped": commit.skipped,
            "evaluator": commit.evaluator,
            "started_at": commit.started_at,
            "finished_at": now,
        }
        if not won:
            return self._insert(
                conn,
                **base,
                outcome=EvaluationOutcome.CONFLICT.value,
                error=(
                    f"another evaluator advanced sensor {commit.sensor!r} past state version "
                    f"{commit.state_version} first; this evaluation's "
                    f"{len(commit.new_runs)} run requests and cursor were discarded"
                ),
            )
        submitted = self.runs.enqueue(conn, commit.new_runs)
        return self._insert(
            conn,
            **base,
            idempotency_key=f"poll:{commit.sensor}:{commit.state_version}",
            error=commit.skip_reasons,
            outcome=EvaluationOutcome.OK.value,
            cursor_after=commit.cursor_after,
            state_version_after=commit.state_version + 1,
            runs_requested=len(submitted.run_ids),
            runs_deduplicated=submitted.deduplicated,
            run_ids=records.to_json(sorted(set(submitted.run_ids)), "run ids"),
        )

    def fail_poll(self, conn: sa.Connection, failure: PollFailure) -> Evaluation:
        """Record a failure and back off; the cursor stays.

        The failure bumps ``state_version`` too, so the late result of an
        evaluation recorded as timed out can no longer commit.
        """
        now = self.now(conn)
        won = self._swap(
            conn,
            failure.sensor,
            failure.state_version,
            consecutive_failures=failure.failures,
            next_evaluation_at=now + failure.next_delay,
            last_evaluation_at=now,
            updated_at=now,
        )
        return self._insert(
            conn,
            sensor=failure.sensor,
            idempotency_key=f"poll:{failure.sensor}:{failure.state_version}" if won else None,
            outcome=(EvaluationOutcome.FAILED if won else EvaluationOutcome.CONFLICT).value,
            cursor_before=failure.cursor_before,
            cursor_after=failure.cursor_before if won else None,
            state_version_before=failure.state_version,
            state_version_after=failure.state_version + 1 if won else None,
            error=failure.error,
            evaluator=failure.evaluator,
            started_at=failure.started_at,
            finished_at=now,
        )

    def set_cursor(
        self, conn: sa.Connection, name: str, cursor: str | None, *, by: str
    ) -> Evaluation | None:
        """An operator's cursor change: a swapped ``manual`` evaluation, due at once.

        The row is locked first (``FOR UPDATE``; SQLite's write transaction
        already excludes other writers), so the swap cannot lose.
        """
        row = conn.execute(
            sa.select(sensors.c.cursor, sensors.c.state_version)
            .where(sensors.c.name == name)
            .with_for_update()
        ).first()
        if row is None:
            return None
        now = self.now(conn)
        swapped = self._swap(
            conn,
            name,
            row.state_version,
            cursor=cursor,
            consecutive_failures=0,
            next_evaluation_at=now,
            updated_at=now,
        )
        assert swapped, "the sensor row is locked by this transaction"
        return self._insert(
            conn,
            sensor=name,
            idempotency_key=f"poll:{name}:{row.state_version}",
            outcome=EvaluationOutcome.MANUAL.value,
            cursor_before=row.cursor,
            cursor_after=cursor,
            state_version_before=row.state_version,
            state_version_after=row.state_version + 1,
            evaluator=by,
            started_at=now,
            finished_at=now,
        )

    # -- push evaluations ----------------------------------------------------

    def find(self, conn: sa.Connection, sensor: str, message_id: str) -> Evaluation | None:
        """The evaluation of the message's first delivery, while the delivery is kept."""
        row = (
            conn.execute(
                sa.select(sensor_evaluations)
                .join(push_deliveries, push_deliveries.c.evaluation_id == sensor_evaluations.c.id)
                .where(
                    push_deliveries.c.sensor == sensor,
                    push_deliveries.c.message_digest == message_digest(message_id),
                )
            )
            .mappings()
            .first()
        )
        return None if row is None else records.evaluation_from_row(row)

    def commit_push(self, conn: sa.Connection, commit: PushCommit) -> tuple[Evaluation, bool]:
        """Record the message's delivery with its evaluation, then insert its runs.

        Returns the evaluation and whether this call created it. When a
        concurrent call recorded the delivery first, nothing is written and
        the first delivery's evaluation is returned.
        """
        evaluation_id = self._deliver(conn, commit)
        if evaluation_id is None:
            existing = self.find(conn, commit.sensor, commit.message_id)
            assert existing is not None, "a conflicting delivery belongs to a committed row"
            return existing, False
        submitted = self.runs.enqueue(conn, commit.new_runs)
        update = (
            sensor_evaluations.update()
            .where(sensor_evaluations.c.id == evaluation_id)
            .values(
                runs_requested=len(submitted.run_ids),
                runs_deduplicated=submitted.deduplicated,
                run_ids=records.to_json(sorted(set(submitted.run_ids)), "run ids"),
                finished_at=self.backend.now,
            )
        )
        (row,) = self.backend.update_returning(conn, update, *sensor_evaluations.c)
        return records.evaluation_from_row(row._mapping), True

    def _deliver(self, conn: sa.Connection, commit: PushCommit) -> int | None:
        """Insert the evaluation and claim the delivery for it; None if already delivered.

        The delivery is unique by ``(sensor, message digest)``; on PostgreSQL
        a concurrent insert of the same one waits for the other transaction.
        The loser takes its own evaluation row back, so it writes nothing.
        """
        version = (
            sa.select(sensors.c.state_version)
            .where(sensors.c.name == commit.sensor)
            .scalar_subquery()
        )
        evaluation_id: int = conn.execute(
            sensor_evaluations.insert()
            .values(
                sensor=commit.sensor,
                idempotency_key=f"push:{commit.sensor}:{commit.message_id}",
                message_id=commit.message_id,
                outcome=EvaluationOutcome.OK.value,
                state_version_before=version,
                state_version_after=version,
                items_skipped=commit.skipped,
                error=records.clean_optional(commit.skip_reasons),
                evaluator=records.clean_text(commit.evaluator),
                started_at=commit.started_at,
                finished_at=self.backend.now,
            )
            .returning(sensor_evaluations.c.id)
        ).scalar_one()
        delivered = self.backend.insert_absent(
            conn,
            push_deliveries,
            [
                {
                    "sensor": commit.sensor,
                    "message_digest": message_digest(commit.message_id),
                    "message_id": commit.message_id,
                    "evaluation_id": evaluation_id,
                    "delivered_at": self.backend.now,
                }
            ],
            unique=["sensor", "message_digest"],
            returning=push_deliveries.c.evaluation_id,
        )
        if not delivered:
            conn.execute(
                sensor_evaluations.delete().where(sensor_evaluations.c.id == evaluation_id)
            )
            return None
        return evaluation_id

    def fail_push(
        self,
        conn: sa.Connection,
        *,
        sensor: str,
        message_id: str,
        error: str,
        started_at: float,
        evaluator: str,
    ) -> Evaluation:
        """A failed delivery: recorded, but not as delivered, so a redelivery runs again."""
        version = conn.execute(
            sa.select(sensors.c.state_version).where(sensors.c.name == sensor)
        ).scalar_one()
        return self._insert(
            conn,
            sensor=sensor,
            message_id=message_id,
            outcome=EvaluationOutcome.FAILED.value,
            state_version_before=version,
            error=error,
            evaluator=evaluator,
            started_at=started_at,
            finished_at=self.now(conn),
        )

    def prune_deliveries(self, conn: sa.Connection, older_than: float) -> int:
        """Forget the deliveries recorded ``older_than`` seconds ago or earlier.

        A message delivered again after that is evaluated again (its runs are
        still deduplicated by run_key); its first evaluation may now be pruned.
        """
        return conn.execute(
            push_deliveries.delete().where(
                push_deliveries.c.delivered_at <= self.now(conn) - older_than
            )
        ).rowcount

    # -- history -------------------------------------------------------------

    def _insert(self, conn: sa.Connection, **values: Any) -> Evaluation:
        for free_text in ("error", "evaluator"):  # errors may quote undecodable names
            if values.get(free_text) is not None:
                values[free_text] = records.clean_text(values[free_text])
        row = (
            conn.execute(
                sensor_evaluations.insert().values(**values).returning(*sensor_evaluations.c)
            )
            .mappings()
            .one()
        )
        return records.evaluation_from_row(row)

    def evaluations(
        self, conn: sa.Connection, name: str, limit: int | None = None
    ) -> list[Evaluation]:
        """Oldest first; with ``limit``, the newest ``limit`` of them (still oldest first)."""
        query = sa.select(sensor_evaluations).where(sensor_evaluations.c.sensor == name)
        if limit is not None:
            query = query.order_by(sensor_evaluations.c.id.desc()).limit(limit)
            rows = list(conn.execute(query).mappings())[::-1]
        else:
            rows = list(conn.execute(query.order_by(sensor_evaluations.c.id)).mappings())
        return [records.evaluation_from_row(row) for row in rows]

    def prune(self, conn: sa.Connection, keep_last: int) -> int:
        """Delete all but the newest ``keep_last`` evaluations of each sensor.

        Sensor rows are never touched, nor the evaluation of a delivery still
        kept (see :meth:`prune_deliveries`): a redelivery returns it.
        """
        names = conn.execute(sa.select(sensors.c.name).order_by(sensors.c.name)).scalars().all()
        deleted = 0
        for name in names:
            cutoff = conn.execute(
                sa.select(sensor_evaluations.c.id)
                .where(sensor_evaluations.c.sensor == name)
                .order_by(sensor_evaluations.c.id.desc())
                .offset(keep_last)
                .limit(1)
            ).scalar_one_or_none()
            if cutoff is None:
                continue
            delivered = sa.exists().where(
                push_deliveries.c.evaluation_id == sensor_evaluations.c.id
            )
            deleted += conn.execute(
                sensor_evaluations.delete().where(
                    sensor_evaluations.c.sensor == name,
                    sensor_evaluations.c.id <= cutoff,
                    ~delivered,
                )
            ).rowcount
        return deleted
