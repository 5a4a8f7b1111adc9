"""runs, processing log, sensors, evaluations, workers

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ferryman_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("run_key", sa.Text, nullable=False),
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
        sa.UniqueConstraint("job", "run_key", name="uq_ferryman_runs_job_run_key"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
            name="ck_ferryman_runs_status",
        ),
    )
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
    op.create_index("ix_ferryman_runs_job_status", "ferryman_runs", ["job", "status", "id"])
    op.create_index("ix_ferryman_runs_status_id", "ferryman_runs", ["status", "id"])

    op.create_table(
        "ferryman_run_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("run_id", Id, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.Text),
        sa.Column("lease_token", sa.BigInteger),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_run_events"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ferryman_runs.id"],
            name="fk_ferryman_run_events_run_id_ferryman_runs",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_ferryman_run_events_run_id", "ferryman_run_events", ["run_id", "id"])

    op.create_table(
        "ferryman_sensors",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("cursor", sa.Text),
        sa.Column("state_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_evaluation_at", sa.Double),
        sa.Column("last_evaluation_at", sa.Double),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ferryman_sensors"),
    )

    op.create_table(
        "ferryman_sensor_evaluations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("sensor", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text),
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
        sa.UniqueConstraint(
            "idempotency_key", name="uq_ferryman_sensor_evaluations_idempotency_key"
        ),
        sa.ForeignKeyConstraint(
            ["sensor"],
            ["ferryman_sensors.name"],
            name="fk_ferryman_sensor_evaluations_sensor_ferryman_sensors",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_ferryman_sensor_evaluations_sensor",
        "ferryman_sensor_evaluations",
        ["sensor", "id"],
    )

    op.create_table(
        "ferryman_workers",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("jobs", sa.Text, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("last_seen_at", sa.Double, nullable=False),
        sa.Column("stopped_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_workers"),
    )


def downgrade() -> None:
    op.drop_table("ferryman_workers")
    op.drop_index("ix_ferryman_sensor_evaluations_sensor", "ferryman_sensor_evaluations")
    op.drop_table("ferryman_sensor_evaluations")
    op.drop_table("ferryman_sensors")
    op.drop_index("ix_ferryman_run_events_run_id", "ferryman_run_events")
    op.drop_table("ferryman_run_events")
    op.drop_index("ix_ferryman_runs_status_id", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_job_status", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_leases", "ferryman_runs")
    op.drop_index("ix_ferryman_runs_due", "ferryman_runs")
    op.drop_table("ferryman_runs")
