"""Batches of push evaluations on PostgreSQL: each step one statement of fixed text.

The portable :class:`~ferryman.store.push_batches.PushBatches` builds
multi-row ``INSERT``\\ s and ``IN`` lists whose text grows with the batch:
SQLAlchemy compiles such a statement afresh for every batch, and psycopg
parses its hundreds of placeholders again, which together cost more than
the database's own work. Here every step is one statement whose text never
changes, its rows bound as arrays (``unnest``), so it is compiled and
parsed once per process:

* the look-up of earlier deliveries (one probe of the key per digest),
  with the sensor's state and the database clock in the same statement;
* the claim: ONE statement reads the database's clock, inserts the
  deliveries (``ON CONFLICT DO NOTHING``) and the evaluations of exactly
  those it inserted — evaluation ids are drawn from the table's sequence
  first, so a message another transaction delivered first writes no
  evaluation at all (nothing to take back). Both inserts run in one
  statement, so the deliveries' foreign key is checked at its end, when the
  evaluations are there. It also says which of the batch's run keys runs
  hold already (what the runs' counts call deduplicated);
* the runs' counts: one ``UPDATE ... FROM unnest(...) RETURNING``, which
  also gives back the evaluations as written (no second read).

The semantics are the portable ones (the broker and sensor tests run on
every store).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ferryman.model import Evaluation, EvaluationOutcome, SensorState
from ferryman.store import records
from ferryman.store.keys import message_digest
from ferryman.store.push_batches import PushBatches
from ferryman.store.schema import push_deliveries, runs, sensor_evaluations, sensors
from ferryman.store.sensors import PushCommit, SensorQueries

__all__ = ["PostgresPushBatches"]

EVALUATIONS = sensor_evaluations.name
STATE = "sensor_state_"  # the sensor's columns beside the evaluations' in one row
CLOCK = "database_clock"
DELIVERIES = push_deliveries.name

# Each digest is looked up on its own (LATERAL ... LIMIT 1, which the planner
# cannot flatten): one probe of the primary key by sensor AND digest, however
# many deliveries the sensor has. Written as ``message_digest = ANY(...)``, a
# table whose statistics say its sensor is rare (new, not analysed yet) was
# read by the sensor alone, every delivery of it filtered: a batch's look-up
# grew with the deliveries made.
FIND = sa.text(
    f"""
    SELECT delivery.message_digest, evaluation.*
    FROM unnest(CAST(:digests AS bytea[])) AS wanted(digest)
    CROSS JOIN LATERAL (
        SELECT message_digest, evaluation_id FROM {DELIVERIES}
        WHERE sensor = :sensor AND message_digest = wanted.digest
        LIMIT 1
    ) AS delivery
    JOIN {EVALUATIONS} AS evaluation ON evaluation.id = delivery.evaluation_id
    """
)

# Run keys are looked up one by one too (LATERAL ... LIMIT 1, as FIND): with
# ``key_digest = ANY(...)``, once psycopg had prepared the statement, it took
# 15-16 ms for a batch of 100 against 5-6 ms (measured on a fresh store).
# Deliveries in digest order: two consumers given overlapping batches (a
# redelivery racing the first delivery) wait on each other's index entries in
# one order, never in a cycle.
CLAIM = sa.text(
    f"""
    WITH clock AS (
        SELECT extract(epoch from clock_timestamp())::float8 AS now
    ), input AS (
        SELECT nextval(pg_get_serial_sequence('{EVALUATIONS}', 'id')) AS id, input.*
        FROM unnest(CAST(:message_ids AS text[]), CAST(:digests AS bytea[]),
                    CAST(:keys AS text[]), CAST(:skipped AS integer[]),
                    CAST(:errors AS text[]), CAST(:evaluators AS text[]),
                    CAST(:started AS float8[]))
             AS input(message_id, digest, idempotency_key, skipped, error, evaluator,
                      started_at)
    ), delivered AS (
        INSERT INTO {DELIVERIES} (sensor, message_digest, message_id, evaluation_id,
                                  delivered_at)
        SELECT :sensor, digest, message_id, id, clock.now FROM input CROSS JOIN clock
        ORDER BY digest
        ON CONFLICT (sensor, message_digest) DO NOTHING
        RETURNING evaluation_id
    )
    INSERT INTO {EVALUATIONS} (id, sensor, idempotency_key, message_id, outcome,
                               state_version_before, state_version_after, items_skipped,
                               error, evaluator, started_at, finished_at)
    SELECT input.id, :sensor, idempotency_key, message_id, :outcome, sensor.state_version,
           sensor.state_version, skipped, error, evaluator, started_at, clock.now
    FROM input
    JOIN delivered ON delivered.evaluation_id = input.id
    CROSS JOIN (SELECT state_version FROM {sensors.name} WHERE name = :sensor) AS sensor
    CROSS JOIN clock
    RETURNING *,
        (SELECT array_agg(run.key_digest)
         FROM unnest(CAST(:run_digests AS bytea[])) AS wanted(digest)
         CROSS JOIN LATERAL (
             SELECT key_digest FROM {runs.name} WHERE key_digest = wanted.digest LIMIT 1
         ) AS run) AS existing_run_digests
    """
)

COUNT_RUNS = sa.text(
    f"""
    UPDATE {EVALUATIONS} AS evaluation
    SET runs_requested = counts.requested, runs_deduplicated = counts.deduplicated,
        run_ids = counts.run_ids
    FROM unnest(CAST(:ids AS bigint[]), CAST(:requested AS integer[]),
                CAST(:deduplicated AS integer[]), CAST(:run_ids AS text[]))
         AS counts(id, requested, deduplicated, run_ids)
    WHERE evaluation.id = counts.id
    RETURNING evaluation.*
    """
)


class PostgresPushBatches(PushBatches):
    """:class:`PushBatches` whose steps are one fixed statement each (see the module)."""

    def find_many(
        self, conn: sa.Connection, sensor: str, message_ids: Sequence[str]
    ) -> dict[str, Evaluation]:
        if not message_ids:
            return {}
        by_digest = {message_digest(message_id): message_id for message_id in message_ids}
        rows = conn.execute(FIND, {"sensor": sensor, "digests": list(by_digest)}).mappings()
        return {
            by_digest[bytes(row["message_digest"])]: records.evaluation_from_row(row)
            for row in rows
        }

    def find_with_state(
        self, queries: SensorQueries, sensor: str, message_ids: Sequence[str]
    ) -> tuple[SensorState | None, dict[str, Evaluation], float]:
        # One statement, not three, and outside a transaction: one statement
        # reads one snapshot, and BEGIN and COMMIT would be two more waits on
        # the database for each batch.
        by_digest = {message_digest(message_id): message_id for message_id in message_ids}
        query = self._find_with_state_query(queries)
        with self.backend.read_engine.connect() as conn:
            rows = (
                conn.execution_options(isolation_level="AUTOCOMMIT")
                .execute(query, {"sensor": sensor, "digests": list(by_digest)})
                .mappings()
                .all()
            )
        state: SensorState | None = None
        now = 0.0
        earlier: dict[str, Evaluation] = {}
        for row in rows:
            if state is None:
                # The state's columns under their own names, as the one row builder reads them.
                columns = {name[len(STATE) :]: row[name] for name in row if name.startswith(STATE)}
                state = records.sensor_from_row(cast("sa.RowMapping", columns))
                now = float(row[CLOCK])
            if row["message_digest"] is not None:
                found = records.evaluation_from_row(row)
                earlier[by_digest[bytes(row["message_digest"])]] = found
        return state, earlier, now

    @functools.cache  # noqa: B019  # one query per store, built once: its text never changes
    def _find_with_state_query(self, queries: SensorQueries) -> sa.Select[Any]:
        """The sensor's state (one row, or none without the sensor), each earlier delivery
        of the digests beside it, and the clock."""
        state = queries.state_query().where(sensors.c.name == sa.bindparam("sensor")).subquery()
        wanted = (
            sa.func.unnest(sa.bindparam("digests", type_=postgresql.ARRAY(sa.LargeBinary)))
            .table_valued("digest")
            .render_derived()
            .alias("wanted")
        )
        delivery = (  # one probe of the primary key per digest, as in FIND
            sa.select(push_deliveries.c.message_digest, push_deliveries.c.evaluation_id)
            .where(
                push_deliveries.c.sensor == sa.bindparam("sensor"),
                push_deliveries.c.message_digest == wanted.c.digest,
            )
            .limit(1)
            .lateral("delivery")
        )
        earlier = (
            sa.select(delivery.c.message_digest, sensor_evaluations)
            .select_from(wanted)
            .join(delivery, sa.true())
            .join(sensor_evaluations, sensor_evaluations.c.id == delivery.c.evaluation_id)
            .subquery()
        )
        return sa.select(
            self.backend.now.label(CLOCK),
            *(column.label(f"{STATE}{column.name}") for column in state.c),
            earlier,
        ).select_from(state.outerjoin(earlier, sa.true()))

    def _claim(
        self, conn: sa.Connection, commits: Sequence[PushCommit]
    ) -> tuple[list[int | None], dict[int, Evaluation], set[bytes] | None]:
        sensor = commits[0].sensor
        run_digests = {new.key_digest for commit in commits for new in commit.new_runs}
        rows = conn.execute(
            CLAIM,
            {
                "sensor": sensor,
                "outcome": EvaluationOutcome.OK.value,
                "message_ids": [commit.message_id for commit in commits],
                "digests": [message_digest(commit.message_id) for commit in commits],
                "keys": [f"push:{sensor}:{commit.message_id}" for commit in commits],
                "skipped": [commit.skipped for commit in commits],
                "errors": [records.clean_optional(commit.skip_reasons) for commit in commits],
                "evaluators": [records.clean_text(commit.evaluator) for commit in commits],
                "started": [commit.started_at for commit in commits],
                "run_digests": list(run_digests),
            },
        ).mappings()
        inserted: dict[str, Evaluation] = {}
        existing: set[bytes] | None = None  # no row: nothing delivered, no runs to count
        for row in rows:
            inserted[row["message_id"]] = records.evaluation_from_row(row)
            if existing is None:  # the same on every row: the look-up ran once
                existing = {bytes(digest) for digest in row["existing_run_digests"] or ()}
        return (
            [found.id if (found := inserted.get(c.message_id)) else None for c in commits],
            {evaluation.id: evaluation for evaluation in inserted.values()},
            existing,
        )

    def _written(
        self,
        conn: sa.Connection,
        evaluation_ids: Sequence[int],
        updates: Sequence[dict[str, Any]],
        inserted: dict[int, Evaluation],
    ) -> dict[int, Evaluation]:
        written = dict(inserted)
        if updates:
            rows = conn.execute(
                COUNT_RUNS,
                {
                    "ids": [update["b_id"] for update in updates],
                    "requested": [update["b_requested"] for update in updates],
                    "deduplicated": [update["b_deduplicated"] for update in updates],
                    "run_ids": [update["b_run_ids"] for update in updates],
                },
            ).mappings()
            written.update((row["id"], records.evaluation_from_row(row)) for row in rows)
        return {evaluation_id: written[evaluation_id] for evaluation_id in evaluation_ids}
