"""runs, processing log, sensors, evaluations, workers

On MariaDB, which has no partial indexes, the due and lease indexes lead with
the status instead; its steps can run again after an upgrade cut short.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import (
    MARIADB_TABLE,
    Id,
    LongText,
    Name,
    Status,
    on_mariadb,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _partial_indexes(again: bool) -> None:
    if on_mariadb():
        op.create_index(
            "ix_ferryman_runs_due",
            "ferryman_runs",
            ["status", "job", "available_at", "id"],
            if_not_exists=again,
        )
        op.create_index(
            "ix_ferryman_runs_leases",
            "ferryman_runs",
            ["status", "lease_expires_at"],
            if_not_exists=again,
        )
        return
    op.create_index(
        "ix_ferryman_runs_due",
        "ferryman_runs",
        ["job", "available_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_ferryman_runs_leases",
        "ferryman_runs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )


def upgrade() -> None:
    again = on_mariadb()  # MariaDB commits each step: a second run skips the done ones
    op.create_table(
        "ferryman_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job", Name, nullable=False),
        sa.Column("run_key", LongText, nullable=False),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("status", Status, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("available_at", sa.Double, nullable=False),
        sa.Column("lease_owner", LongText),
        sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("checkpoint", LongText),
        sa.Column("last_error", LongText),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_runs"),
        sa.UniqueConstraint("job", "run_key", name="uq_ferryman_runs_job_run_key"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
            name="ck_ferryman_runs_status",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    _partial_indexes(again)
    op.create_index(
        "ix_ferryman_runs_job_status", "ferryman_runs", ["job", "status", "id"], if_not_exists=again
    )
    op.create_index(
        "ix_ferryman_runs_status_id", "ferryman_runs", ["status", "id"], if_not_exists=again
    )

    op.create_table(
        "ferryman_run_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", Id, nullable=False),
        sa.Column("kind", LongText, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", LongText),
        sa.Column("lease_token", sa.BigInteger),
        sa.Column("detail", LongText),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_run_events"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ferryman_runs.id"],
            name="fk_ferryman_run_events_run_id_ferryman_runs",
            ondelete="CASCADE",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_run_events_run_id",
        "ferryman_run_events",
        ["run_id", "id"],
        if_not_exists=again,
    )

    op.create_table(
        "ferryman_sensors",
        sa.Column("name", Name, nullable=False),
        sa.Column("kind", LongText, nullable=False),
        sa.Column("cursor", LongText),
        sa.Column("state_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", LongText, nullable=False, server_default="running"),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_evaluation_at", sa.Double),
        sa.Column("last_evaluation_at", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ferryman_sensors"),
        **MARIADB_TABLE,
        if_not_exists=again,
    )

    op.create_table(
        "ferryman_sensor_evaluations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("sensor", Name, nullable=False),
        sa.Column("idempotency_key", LongText),
        sa.Column("outcome", LongText, nullable=False),
        sa.Column("cursor_before", LongText),
        sa.Column("cursor_after", LongText),
        sa.Column("state_version_before", sa.BigInteger, nullable=False),
        sa.Column("state_version_after", sa.BigInteger),
        sa.Column("runs_requested", sa.Integer, nullable=False, server_default="0"),
        sa.Column("runs_deduplicated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("items_skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("run_ids", LongText),
        sa.Column("error", LongText),
        sa.Column("evaluator", LongText),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_sensor_evaluations"),
        sa.UniqueConstraint(
            "idempotency_key", name="uq_ferryman_sensor_evaluations_idempotency_key"
        ),
        sa.ForeignKeyConstraint(
            ["sensor"],
            ["ferryman_sensors.name"],
            name="fk_ferryman_sensor_evaluations_sensor_ferryman_sensors",
            ondelete="CASCADE",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_sensor_evaluations_sensor",
        "ferryman_sensor_evaluations",
        ["sensor", "id"],
        if_not_exists=again,
    )

    op.create_table(
        "ferryman_workers",
        sa.Column("id", Name, nullable=False),
        sa.Column("host", LongText, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("jobs", LongText, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen_at", sa.Double, nullable=False),
        sa.Column("stopped_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_workers"),
        **MARIADB_TABLE,
        if_not_exists=again,
    )


def downgrade() -> None:
    op.drop_table("ferryman_workers")
    if not on_mariadb():  # there the index of a foreign key goes with its table only
        op.drop_index("ix_ferryman_sensor_evaluations_sensor", "ferryman_sensor_evaluations")
    op.drop_table("ferryman_sensor_evaluations")
    op.drop_table("ferryman_sensors")
    if not on_mariadb():
        op.drop_index("ix_ferryman_run_events_run_id", "ferryman_run_events")
    op.drop_table("ferryman_run_events")
    op.drop_index("ix_ferryman_runs_status_id", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_job_status", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_leases", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_due", "ferryman_runs")
    op.drop_table("ferryman_runs")
