"""Batches of push evaluations on SQLite: statements compiled once, run on the driver.

The portable :class:`~ferryman.store.push_batches.PushBatches` goes through
SQLAlchemy for each row it inserts (SQLite cannot insert many rows, skip
those already there and say which went in, in one statement): building,
keying and executing those statements cost many times what SQLite spends on
them, and on SQLite that time is spent holding the database's single write
lock. Here the three row-by-row steps run as Core statements compiled once
to SQLite's SQL and executed on the driver's cursor
(:class:`~ferryman.store.sqlite_driver.DriverStatement`, as the worker's hot paths
are): the evaluations and the deliveries one row at a time (each insert says
which row it made), the runs' counts with ``executemany``. Same statements,
same semantics, same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from ferryman.store.push_batches import PushBatches
from ferryman.store.schema import push_deliveries, sensor_evaluations
from ferryman.store.sqlite_driver import DriverStatement

__all__ = ["SQLitePushBatches"]

EVALUATION_COLUMNS = (
    "sensor",
    "idempotency_key",
    "message_id",
    "outcome",
    "state_version_before",
    "state_version_after",
    "items_skipped",
    "error",
    "evaluator",
    "started_at",
    "finished_at",
)

INSERT_EVALUATION = DriverStatement(
    sensor_evaluations.insert()
    .values({name: sa.bindparam(name) for name in EVALUATION_COLUMNS})
    .returning(sensor_evaluations.c.id)
)

INSERT_DELIVERY = DriverStatement(
    sqlite_insert(push_deliveries)
    .values({column.name: sa.bindparam(column.name) for column in push_deliveries.c})
    .on_conflict_do_nothing(index_elements=["sensor", "message_digest"])
    .returning(push_deliveries.c.evaluation_id)
)

SET_COUNTS = DriverStatement(
    sensor_evaluations.update()
    .where(sensor_evaluations.c.id == sa.bindparam("b_id"))
    .values(
        runs_requested=sa.bindparam("b_requested"),
        runs_deduplicated=sa.bindparam("b_deduplicated"),
        run_ids=sa.bindparam("b_run_ids"),
    )
)


class SQLitePushBatches(PushBatches):
    """:class:`PushBatches` whose row-by-row steps run on the driver (see the module)."""

    def _insert_evaluation_rows(
        self, conn: sa.Connection, rows: Sequence[dict[str, Any]]
    ) -> list[int]:
        return [INSERT_EVALUATION.rows(conn, row)[0].id for row in rows]

    def _insert_deliveries(self, conn: sa.Connection, rows: Sequence[dict[str, Any]]) -> set[int]:
        won: set[int] = set()
        for row in rows:
            won.update(found.evaluation_id for found in INSERT_DELIVERY.rows(conn, row))
        return won

    def _set_counts(self, conn: sa.Connection, updates: Sequence[dict[str, Any]]) -> None:
        if updates:
            SET_COUNTS.many(conn, updates)
