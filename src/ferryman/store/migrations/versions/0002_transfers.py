"""transfers and their parts (resumable S3 multipart uploads)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ferryman_transfers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("bucket", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("follow", sa.Boolean, nullable=False),
        sa.Column("part_size", sa.BigInteger, nullable=False),
        sa.Column("upload_id", sa.Text),
        sa.Column("source_size", sa.BigInteger),
        sa.Column("source_mtime", sa.Double),
        sa.Column("bytes_confirmed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("parts_confirmed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_size", sa.BigInteger),
        sa.Column("sha256", sa.Text),
        sa.Column("checksum", sa.Text),
        sa.Column("etag", sa.Text),
        sa.Column("verified_by", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("user_metadata", sa.Text),
        sa.Column("sidecar_key", sa.Text),
        sa.Column("run_id", Id),
        sa.Column("owner", sa.Text),
        sa.Column("owner_token", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Double),
        sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_transfers"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ferryman_runs.id"],
            name="fk_ferryman_transfers_run_id_ferryman_runs",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            "status IN ('active', 'succeeded', 'failed')",
            name="ck_ferryman_transfers_status",
        ),
    )
    op.create_index(
        "ix_ferryman_transfers_active_object",
        "ferryman_transfers",
        ["bucket", "key"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_ferryman_transfers_status_id", "ferryman_transfers", ["status", "id"])
    op.create_index("ix_ferryman_transfers_run_id", "ferryman_transfers", ["run_id"])

    op.create_table(
        "ferryman_transfer_parts",
        sa.Column("transfer_id", Id, nullable=False),
        sa.Column("part_number", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("adopted", sa.Boolean, nullable=False),
        sa.Column("owner_token", sa.BigInteger, nullable=False),
        sa.Column("confirmed_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("transfer_id", "part_number", name="pk_ferryman_transfer_parts"),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["ferryman_transfers.id"],
            name="fk_ferryman_transfer_parts_transfer_id_ferryman_transfers",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("ferryman_transfer_parts")
    op.drop_index("ix_ferryman_transfers_run_id", "ferryman_transfers")
    op.drop_index("ix_ferryman_transfers_status_id", "ferryman_transfers")
    op.drop_index("ix_ferryman_transfers_active_object", "ferryman_transfers")
    op.drop_table("ferryman_transfers")
