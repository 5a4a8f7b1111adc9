"""SQL for batches of push evaluations: what a broker source delivers at once.

:meth:`PushBatches.commit_many` keeps the rules of
:meth:`SensorQueries.commit_push <ferryman.store.sensors.SensorQueries.commit_push>`
— a message is recorded once per ``(sensor, message_id)``, its runs, its
evaluation and its delivery in the same transaction — for many messages of
one sensor with a few statements in all, not a few per message: the
evaluations in one insert, the deliveries in one, the runs in one enqueue.

This is the portable code (MariaDB runs it). PostgreSQL and SQLite run the
same steps in statements of their own, compiled once
(:mod:`ferryman.store.push_postgres`, :mod:`ferryman.store.push_sqlite`):
building a multi-row statement afresh for each batch cost more than the
database's work on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import Evaluation, EvaluationOutcome, SensorState
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.keys import message_digest
from ferryman.store.queue import RunQueue
from ferryman.store.schema import push_deliveries, sensor_evaluations, sensors
from ferryman.store.schema import runs as runs_table
from ferryman.store.sensors import PushCommit, SensorQueries

__all__ = ["FIND_CHUNK", "PushBatches"]

FIND_CHUNK = 500  # digests or ids per lookup: well under any bound-parameter limit


class PushBatches:
    """Many push evaluations of one sensor, looked up and committed together."""

    def __init__(self, backend: Backend, runs: RunQueue) -> None:
        self.backend = backend
        self.runs = runs

    def find_many(
        self, conn: sa.Connection, sensor: str, message_ids: Sequence[str]
    ) -> dict[str, Evaluation]:
        """The first evaluations of those of ``message_ids`` already delivered, by id."""
        by_digest = {message_digest(message_id): message_id for message_id in message_ids}
        found: dict[str, Evaluation] = {}
        digests = list(by_digest)
        for start in range(0, len(digests), FIND_CHUNK):
            rows = conn.execute(
                sa.select(push_deliveries.c.message_digest, sensor_evaluations)
                .join(push_deliveries, push_deliveries.c.evaluation_id == sensor_evaluations.c.id)
                .where(
                    push_deliveries.c.sensor == sensor,
                    push_deliveries.c.message_digest.in_(digests[start : start + FIND_CHUNK]),
                )
            ).mappings()
            for row in rows:
                found[by_digest[bytes(row["message_digest"])]] = records.evaluation_from_row(row)
        return found

    def find_with_state(
        self, queries: SensorQueries, sensor: str, message_ids: Sequence[str]
    ) -> tuple[SensorState | None, dict[str, Evaluation], float]:
        """The sensor's state, the earlier evaluations of those of ``message_ids``
        already delivered (by id), and the database clock, read together."""
        with self.backend.read_engine.begin() as conn:
            earlier = self.find_many(conn, sensor, message_ids)
            return queries.state(conn, sensor), earlier, queries.now(conn)

    def commit_many(
        self, conn: sa.Connection, commits: Sequence[PushCommit]
    ) -> list[tuple[Evaluation, bool]]:
        """``commit_push`` for many messages of one sensor, in the caller's transaction.

        Same rules, fewer statements: the evaluations and the deliveries are
        inserted in one statement each; a delivery that another transaction
        recorded first takes its evaluation row back and returns the first
        one. The message ids must be distinct. Returns each message's
        evaluation and whether this call recorded it, in the order given.
        """
        if not commits:
            return []
        claimed, inserted, existing = self._claim(conn, commits)
        delivered = [(c, e) for c, e in zip(commits, claimed, strict=True) if e is not None]
        updates = self._enqueue_batch(conn, delivered, existing)
        written = self._written(conn, [e for _, e in delivered], updates, inserted)
        lost = [c.message_id for c, e in zip(commits, claimed, strict=True) if e is None]
        earlier = self.find_many(conn, commits[0].sensor, lost)
        return [
            (written[evaluation_id], True)
            if evaluation_id is not None
            else (earlier[commit.message_id], False)
            for commit, evaluation_id in zip(commits, claimed, strict=True)
        ]

    # -- the steps, each one or a few statements; a store may run its own ------

    def _claim(
        self, conn: sa.Connection, commits: Sequence[PushCommit]
    ) -> tuple[list[int | None], dict[int, Evaluation], set[bytes] | None]:
        """Record each message's evaluation and delivery, at the database's clock.

        Returns per message its evaluation id, or None where another
        transaction delivered it first (nothing written for it); the
        evaluations as inserted, by id, where the store's insert returns them;
        and the run key digests of the commits' runs that runs held already,
        where the store's claim looks them up (None: not looked up).
        """
        now = self.runs.now(conn)
        evaluation_ids = self._insert_evaluations(conn, commits, now)
        won = self._record_deliveries(conn, list(zip(commits, evaluation_ids, strict=True)), now)
        return [e if e in won else None for e in evaluation_ids], {}, None

    def _written(
        self,
        conn: sa.Connection,
        evaluation_ids: Sequence[int],
        updates: Sequence[dict[str, Any]],
        inserted: dict[int, Evaluation],
    ) -> dict[int, Evaluation]:
        """Write the runs' counts (``_enqueue_batch``'s updates); the evaluations as written.

        ``inserted``: what ``_claim`` returned (unused here: the rows are read back).
        """
        self._set_counts(conn, updates)
        return self._evaluations(conn, evaluation_ids)

    def _existing_digests(self, conn: sa.Connection, digests: Sequence[bytes]) -> set[bytes]:
        """Those of the run key digests that runs hold already."""
        seen: set[bytes] = set()
        for start in range(0, len(digests), FIND_CHUNK):
            query = sa.select(runs_table.c.key_digest).where(
                runs_table.c.key_digest.in_(digests[start : start + FIND_CHUNK])
            )
            seen.update(bytes(digest) for digest in conn.execute(query).scalars())
        return seen

    def _insert_evaluations(
        self, conn: sa.Connection, commits: Sequence[PushCommit], now: float
    ) -> list[int]:
        """One ``ok`` evaluation row per message; their ids in order."""
        version = conn.execute(
            sa.select(sensors.c.state_version).where(sensors.c.name == commits[0].sensor)
        ).scalar_one()
        return self._insert_evaluation_rows(
            conn,
            [
                {
                    "sensor": commit.sensor,
                    "idempotency_key": f"push:{commit.sensor}:{commit.message_id}",
                    "message_id": commit.message_id,
                    "outcome": EvaluationOutcome.OK.value,
                    "state_version_before": version,
                    "state_version_after": version,
                    "items_skipped": commit.skipped,
                    "error": records.clean_optional(commit.skip_reasons),
                    "evaluator": records.clean_text(commit.evaluator),
                    "started_at": commit.started_at,
                    "finished_at": now,
                }
                for commit in commits
            ],
        )

    def _insert_evaluation_rows(
        self, conn: sa.Connection, rows: Sequence[dict[str, Any]]
    ) -> list[int]:
        """Insert the rows in one statement; their ids in order."""
        insert = sensor_evaluations.insert().returning(
            sensor_evaluations.c.id, sort_by_parameter_order=True
        )
        return list(conn.execute(insert, list(rows)).scalars())

    def _record_deliveries(
        self, conn: sa.Connection, pairs: Sequence[tuple[PushCommit, int]], now: float
    ) -> set[int]:
        """Claim each message's delivery for its evaluation; the evaluation ids that won.

        A message another transaction delivered first takes its evaluation
        row back, so it writes nothing.
        """
        won = self._insert_deliveries(
            conn,
            [
                {
                    "sensor": commit.sensor,
                    "message_digest": message_digest(commit.message_id),
                    "message_id": commit.message_id,
                    "evaluation_id": evaluation_id,
                    "delivered_at": now,
                }
                for commit, evaluation_id in pairs
            ],
        )
        lost = [evaluation_id for _, evaluation_id in pairs if evaluation_id not in won]
        if lost:
            conn.execute(sensor_evaluations.delete().where(sensor_evaluations.c.id.in_(lost)))
        return won

    def _insert_deliveries(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> set[int]:
        """Insert the delivery rows no row holds yet; the evaluation ids of those inserted."""
        return set(
            self.backend.insert_absent(
                conn,
                push_deliveries,
                rows,
                unique=["sensor", "message_digest"],
                returning=push_deliveries.c.evaluation_id,
            )
        )

    def _set_counts(self, conn: sa.Connection, updates: Sequence[dict[str, Any]]) -> None:
        """Write each evaluation's runs requested, deduplicated and their ids, in one call."""
        if not updates:
            return
        conn.execute(
            sensor_evaluations.update()
            .where(sensor_evaluations.c.id == sa.bindparam("b_id"))
            .values(
                runs_requested=sa.bindparam("b_requested"),
                runs_deduplicated=sa.bindparam("b_deduplicated"),
                run_ids=sa.bindparam("b_run_ids", type_=sensor_evaluations.c.run_ids.type),
            ),
            updates,
        )

    def _evaluations(self, conn: sa.Connection, ids: Sequence[int]) -> dict[int, Evaluation]:
        """The evaluations with those ids, as written, by id."""
        written: dict[int, Evaluation] = {}
        for start in range(0, len(ids), FIND_CHUNK):
            query = sa.select(sensor_evaluations).where(
                sensor_evaluations.c.id.in_(ids[start : start + FIND_CHUNK])
            )
            for row in conn.execute(query).mappings():
                written[row["id"]] = records.evaluation_from_row(row)
        return written

    def _enqueue_batch(
        self,
        conn: sa.Connection,
        delivered: Sequence[tuple[PushCommit, int]],
        existing: set[bytes] | None,
    ) -> list[dict[str, Any]]:
        """Insert the runs of every delivered message in one call; each evaluation's counts.

        One ``enqueue`` for the batch, not one per message: a round trip per
        message would cost what the batch saves. Its run ids come back in
        request order and are split by message. A message's deduplicated runs
        are those that existed when the batch began, or that an earlier
        message of the batch (or itself) requested first — as if the messages
        had been committed one after the other. (A run that another producer
        commits in the instant between that look-up and the insert is counted
        as requested here, not deduplicated: the run itself is still one.)
        ``existing``: the look-up's answer if the claim made it, else None.
        """
        new_runs = [new for commit, _ in delivered for new in commit.new_runs]
        if not new_runs:
            return []
        if existing is None:
            existing = self._existing_digests(conn, list({new.key_digest for new in new_runs}))
        seen = set(existing)
        run_ids = iter(self.runs.enqueue(conn, new_runs).run_ids)
        updates = []
        for commit, evaluation_id in delivered:
            if not commit.new_runs:
                continue
            ids = [next(run_ids) for _ in commit.new_runs]
            deduplicated = 0
            for new in commit.new_runs:
                deduplicated += new.key_digest in seen
                seen.add(new.key_digest)
            updates.append(
                {
                    "b_id": evaluation_id,
                    "b_requested": len(ids),
                    "b_deduplicated": deduplicated,
                    "b_run_ids": records.to_json(sorted(set(ids)), "run ids"),
                }
            )
        return updates
