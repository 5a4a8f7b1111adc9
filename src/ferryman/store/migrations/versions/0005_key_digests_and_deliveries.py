"""keys of any length unique by digest; push deliveries in a table of their own

* ``ferryman_runs.key_digest`` (SHA-256 of job, NUL, run_key) replaces the
  unique constraint on ``(job, run_key)``, which PostgreSQL cannot hold for a
  key over about 2.7 kB; a hash index on ``run_key`` serves comparisons in SQL.
* ``ferryman_sensor_evaluations.message_id``: the message a push evaluation
  was for. ``idempotency_key`` is no longer unique for push evaluations (it
  could not hold long message ids either); it stays unique for poll ones.
* ``ferryman_push_deliveries``: one row per delivered message, unique by
  ``(sensor, SHA-256 of message_id)``, filled from the push evaluations found.

SQLite cannot drop a constraint, so the two tables are rebuilt there (copy,
drop, rename). That must run with foreign keys off, or dropping the old runs
table would delete every processing-log row with it: ferryman opens the
connection for migrations so (``Store``, ``ferryman db upgrade``), and this
migration refuses to run otherwise.

MariaDB has no partial index: the unique poll key is a unique index on a
stored generated column there (the key's SHA-256 for poll evaluations, NULL
for push ones), and the run key index holds the keys' first 255 characters.
Its steps can run again, so an upgrade cut short is completed by running it
again (MariaDB commits each DDL statement at once).

The digests computed here must equal those of ``ferryman.store.keys``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import (
    MARIADB_TABLE,
    Digest,
    Id,
    LongText,
    Name,
    on_mariadb,
)

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

RUNS = "ferryman_runs"
EVALUATIONS = "ferryman_sensor_evaluations"
DELIVERIES = "ferryman_push_deliveries"
RUN_COLUMNS = (
    "id, job, run_key, payload, status, attempt, max_attempts, available_at, lease_owner, "
    "lease_token, lease_expires_at, checkpoint, last_error, created_at, updated_at, "
    "started_at, finished_at"
)
EVALUATION_COLUMNS = (
    "id, sensor, idempotency_key, outcome, cursor_before, cursor_after, state_version_before, "
    "state_version_after, runs_requested, runs_deduplicated, items_skipped, run_ids, error, "
    "evaluator, started_at, finished_at"
)
# An evaluation keyed push:{sensor}:{message_id}: the message id is what follows
# its own sensor's prefix (the key alone cannot tell "orders" + "eu:42" from
# "orders:eu" + "42"; the sensor column can).
PUSH_PREFIX = "substr(idempotency_key, 1, length(sensor) + 6) = 'push:' || sensor || ':'"
MESSAGE_ID = "substr(idempotency_key, length(sensor) + 7)"
# MariaDB: LENGTH counts bytes there and || is OR; CHAR_LENGTH and CONCAT instead.
MARIADB_PUSH_PREFIX = (
    "SUBSTRING(idempotency_key, 1, CHAR_LENGTH(sensor) + 6) = CONCAT('push:', sensor, ':')"
)
MARIADB_MESSAGE_ID = "SUBSTRING(idempotency_key, CHAR_LENGTH(sensor) + 7)"
MARIADB_STEPS = (
    f"ALTER TABLE {RUNS} ADD COLUMN IF NOT EXISTS key_digest BINARY(32) AFTER run_key",
    f"UPDATE {RUNS} SET key_digest = UNHEX(SHA2(CONCAT(job, CHAR(0), run_key), 256))",
    f"ALTER TABLE {RUNS} MODIFY key_digest BINARY(32) NOT NULL",
    f"ALTER TABLE {RUNS} ADD UNIQUE INDEX IF NOT EXISTS uq_ferryman_runs_key_digest (key_digest)",
    f"ALTER TABLE {RUNS} DROP INDEX IF EXISTS uq_ferryman_runs_job_run_key",
    f"ALTER TABLE {EVALUATIONS} ADD COLUMN IF NOT EXISTS message_id LONGTEXT AFTER idempotency_key",
    f"UPDATE {EVALUATIONS} SET message_id = {MARIADB_MESSAGE_ID} WHERE {MARIADB_PUSH_PREFIX}",
    f"ALTER TABLE {EVALUATIONS} DROP INDEX IF EXISTS "
    "uq_ferryman_sensor_evaluations_idempotency_key",
    # One poll evaluation per key: what the partial unique index is elsewhere.
    f"ALTER TABLE {EVALUATIONS} ADD COLUMN IF NOT EXISTS poll_key_digest BINARY(32) "
    "AS (IF(`message_id` IS NULL, UNHEX(SHA2(`idempotency_key`, 256)), NULL)) PERSISTENT, "
    "ADD UNIQUE INDEX IF NOT EXISTS ix_ferryman_sensor_evaluations_poll_key (poll_key_digest)",
)


def _run_key_digest(job: str, run_key: str) -> bytes:
    return hashlib.sha256(f"{job}\x00{run_key}".encode()).digest()


def _message_digest(message_id: str) -> bytes:
    return hashlib.sha256(message_id.encode()).digest()


def _on_sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _sqlite_driver() -> sqlite3.Connection:
    bind = op.get_bind()
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError(
            "migration 0005 rebuilds tables on SQLite and must run with foreign keys off "
            "(ferryman does so); with them on, the processing log would be deleted"
        )
    driver = bind.connection.dbapi_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _runs_table(name: str, *, digest: bool) -> None:
    """ferryman_runs as of 0004, with or without the digest that replaces its unique key."""
    unique = (
        sa.UniqueConstraint("key_digest", name="uq_ferryman_runs_key_digest")
        if digest
        else sa.UniqueConstraint("job", "run_key", name="uq_ferryman_runs_job_run_key")
    )
    op.create_table(
        name,
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("run_key", sa.Text, nullable=False),
        *([sa.Column("key_digest", sa.LargeBinary, nullable=False)] if digest else []),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("available_at", sa.Double, nullable=False),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("checkpoint", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_runs"),
        unique,
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
            name="ck_ferryman_runs_status",
        ),
    )


def _runs_indexes() -> None:
    """The indexes of 0001, 0003 and 0004, gone with the table SQLite rebuilt."""
    op.create_index(
        "ix_ferryman_runs_due",
        RUNS,
        ["job", "available_at", "id"],
        sqlite_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_ferryman_runs_leases",
        RUNS,
        ["lease_expires_at"],
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_index("ix_ferryman_runs_job_status", RUNS, ["job", "status", "id"])
    op.create_index("ix_ferryman_runs_status_id", RUNS, ["status", "id"])
    op.create_index("ix_ferryman_runs_finished_at", RUNS, ["finished_at"])
    op.create_index("ix_ferryman_runs_created_at", RUNS, ["created_at", "id"])


def _evaluations_table(name: str, *, message_id: bool) -> None:
    op.create_table(
        name,
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("sensor", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        *([sa.Column("message_id", sa.Text)] if message_id else []),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("cursor_before", sa.Text),
        sa.Column("cursor_after", sa.Text),
        sa.Column("state_version_before", sa.BigInteger, nullable=False),
        sa.Column("state_version_after", sa.BigInteger),
        sa.Column("runs_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("runs_deduplicated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("items_skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("run_ids", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("evaluator", sa.Text),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_sensor_evaluations"),
        *(
            []
            if message_id
            else [
                sa.UniqueConstraint(
                    "idempotency_key", name="uq_ferryman_sensor_evaluations_idempotency_key"
                )
            ]
        ),
        sa.ForeignKeyConstraint(
            ["sensor"],
            ["ferryman_sensors.name"],
            name="fk_ferryman_sensor_evaluations_sensor_ferryman_sensors",
            ondelete="CASCADE",
        ),
    )


def _rebuild_sqlite(
    table: str, create: Callable[[str], None], columns: str, extra: str, values: str
) -> None:
    """Copy ``table`` into its new definition (``create``), drop it, take its name."""
    create(f"{table}_new")
    op.execute(f"INSERT INTO {table}_new ({columns}{extra}) SELECT {columns}{values} FROM {table}")
    op.drop_table(table)
    op.rename_table(f"{table}_new", table)


def _deliveries(again: bool) -> None:
    op.create_table(
        DELIVERIES,
        sa.Column("sensor", Name, nullable=False),
        sa.Column("message_digest", Digest, nullable=False),
        sa.Column("message_id", LongText, nullable=False),
        sa.Column("evaluation_id", Id, nullable=False),
        sa.Column("delivered_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("sensor", "message_digest", name="pk_ferryman_push_deliveries"),
        sa.ForeignKeyConstraint(
            ["sensor"],
            ["ferryman_sensors.name"],
            name="fk_ferryman_push_deliveries_sensor_ferryman_sensors",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            [f"{EVALUATIONS}.id"],
            name="fk_ferryman_push_deliveries_evaluation_id",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_push_deliveries_delivered_at",
        DELIVERIES,
        ["delivered_at"],
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_push_deliveries_evaluation_id",
        DELIVERIES,
        ["evaluation_id"],
        if_not_exists=again,
    )
    if _on_sqlite():
        digest = "ferryman_message_digest(message_id)"
    elif on_mariadb():
        digest = "UNHEX(SHA2(message_id, 256))"
    else:
        digest = "sha256(convert_to(message_id, 'UTF8'))"
    op.execute(
        f"INSERT INTO {DELIVERIES} (sensor, message_digest, message_id, evaluation_id, "
        f"delivered_at) SELECT sensor, {digest}, message_id, id, finished_at "
        f"FROM {EVALUATIONS} WHERE message_id IS NOT NULL AND outcome = 'ok'"
    )


def _poll_key_index() -> None:
    op.create_index(
        "ix_ferryman_sensor_evaluations_poll_key",
        EVALUATIONS,
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("message_id IS NULL"),
        sqlite_where=sa.text("message_id IS NULL"),
    )


def _upgrade_mariadb() -> None:
    """Every step can run again: an upgrade cut short is completed by running it again."""
    for step in MARIADB_STEPS:
        op.execute(step)
    op.create_index(
        "ix_ferryman_runs_run_key",
        RUNS,
        ["run_key"],
        mariadb_length={"run_key": 255},
        if_not_exists=True,
    )
    _deliveries(again=True)


def upgrade() -> None:
    if on_mariadb():
        _upgrade_mariadb()
        return
    if _on_sqlite():
        driver = _sqlite_driver()
        driver.create_function("ferryman_key_digest", 2, _run_key_digest, deterministic=True)
        driver.create_function("ferryman_message_digest", 1, _message_digest, deterministic=True)
        _rebuild_sqlite(
            RUNS,
            lambda name: _runs_table(name, digest=True),
            RUN_COLUMNS,
            ", key_digest",
            ", ferryman_key_digest(job, run_key)",
        )
        _runs_indexes()
        _rebuild_sqlite(
            EVALUATIONS,
            lambda name: _evaluations_table(name, message_id=True),
            EVALUATION_COLUMNS,
            ", message_id",
            f", CASE WHEN {PUSH_PREFIX} THEN {MESSAGE_ID} END",
        )
        op.create_index("ix_ferryman_sensor_evaluations_sensor", EVALUATIONS, ["sensor", "id"])
    else:
        op.add_column(RUNS, sa.Column("key_digest", sa.LargeBinary))
        op.execute(
            f"UPDATE {RUNS} SET key_digest = sha256("
            "convert_to(job, 'UTF8') || decode('00', 'hex') || convert_to(run_key, 'UTF8'))"
        )
        op.alter_column(RUNS, "key_digest", nullable=False)
        op.create_unique_constraint("uq_ferryman_runs_key_digest", RUNS, ["key_digest"])
        op.drop_constraint("uq_ferryman_runs_job_run_key", RUNS, type_="unique")
        op.add_column(EVALUATIONS, sa.Column("message_id", sa.Text))
        op.execute(f"UPDATE {EVALUATIONS} SET message_id = {MESSAGE_ID} WHERE {PUSH_PREFIX}")
        op.drop_constraint(
            "uq_ferryman_sensor_evaluations_idempotency_key", EVALUATIONS, type_="unique"
        )
    op.create_index("ix_ferryman_runs_run_key", RUNS, ["run_key"], postgresql_using="hash")
    _poll_key_index()
    _deliveries(again=False)


def downgrade() -> None:
    if on_mariadb():
        raise NotImplementedError(
            "a MariaDB store is not downgraded below revision 0005; restore a backup instead"
        )
    op.drop_table(DELIVERIES)
    op.drop_index("ix_ferryman_sensor_evaluations_poll_key", EVALUATIONS)
    op.drop_index("ix_ferryman_runs_run_key", RUNS)
    if _on_sqlite():
        _sqlite_driver()
        _rebuild_sqlite(RUNS, lambda name: _runs_table(name, digest=False), RUN_COLUMNS, "", "")
        _runs_indexes()
        _rebuild_sqlite(
            EVALUATIONS,
            lambda name: _evaluations_table(name, message_id=False),
            EVALUATION_COLUMNS,
            "",
            "",
        )
        op.create_index("ix_ferryman_sensor_evaluations_sensor", EVALUATIONS, ["sensor", "id"])
        return
    op.create_unique_constraint(
        "uq_ferryman_sensor_evaluations_idempotency_key", EVALUATIONS, ["idempotency_key"]
    )
    op.drop_column(EVALUATIONS, "message_id")
    op.create_unique_constraint("uq_ferryman_runs_job_run_key", RUNS, ["job", "run_key"])
    op.drop_constraint("uq_ferryman_runs_key_digest", RUNS, type_="unique")
    op.drop_column(RUNS, "key_digest")
