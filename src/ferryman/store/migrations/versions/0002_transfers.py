"""transfers and their parts (resumable S3 multipart uploads)

On MariaDB, which has no partial indexes, one active transfer per object is
kept by a unique index on a stored generated column: the SHA-256 of bucket,
NUL and key while the transfer is active, NULL otherwise.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import (
    MARIADB_TABLE,
    Id,
    LongText,
    Status,
    on_mariadb,
)

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ACTIVE_OBJECT_ON_MARIADB = (
    "ALTER TABLE ferryman_transfers ADD COLUMN IF NOT EXISTS active_object_digest BINARY(32) "
    "AS (IF(`status` = 'active', UNHEX(SHA2(CONCAT(`bucket`, CHAR(0), `key`), 256)), NULL)) "
    "PERSISTENT, ADD UNIQUE INDEX IF NOT EXISTS ix_ferryman_transfers_active_object "
    "(active_object_digest)"
)


def _active_object_index() -> None:
    if on_mariadb():
        op.execute(ACTIVE_OBJECT_ON_MARIADB)
        return
    op.create_index(
        "ix_ferryman_transfers_active_object",
        "ferryman_transfers",
        ["bucket", "key"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )


def upgrade() -> None:
    again = on_mariadb()  # MariaDB commits each step: a second run skips the done ones
    op.create_table(
        "ferryman_transfers",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source_path", LongText, nullable=False),
        sa.Column("bucket", LongText, nullable=False),
        sa.Column("key", LongText, nullable=False),
        sa.Column("status", Status, nullable=False),
        sa.Column("follow", sa.Boolean, nullable=False),
        sa.Column("part_size", sa.BigInteger, nullable=False),
        sa.Column("upload_id", LongText),
        sa.Column("source_size", sa.BigInteger),
        sa.Column("source_mtime", sa.Double),
        sa.Column("bytes_confirmed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("parts_confirmed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("total_size", sa.BigInteger),
        sa.Column("sha256", LongText),
        sa.Column("checksum", LongText),
        sa.Column("etag", LongText),
        sa.Column("verified_by", LongText),
        sa.Column("reason", LongText),
        sa.Column("error", LongText),
        sa.Column("user_metadata", LongText),
        sa.Column("sidecar_key", LongText),
        sa.Column("run_id", Id),
        sa.Column("owner", LongText),
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
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    _active_object_index()
    op.create_index(
        "ix_ferryman_transfers_status_id",
        "ferryman_transfers",
        ["status", "id"],
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_transfers_run_id", "ferryman_transfers", ["run_id"], if_not_exists=again
    )

    op.create_table(
        "ferryman_transfer_parts",
        sa.Column("transfer_id", Id, nullable=False),
        sa.Column("part_number", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("etag", LongText, nullable=False),
        sa.Column("sha256", LongText, nullable=False),
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
        **MARIADB_TABLE,
        if_not_exists=again,
    )


def downgrade() -> None:
    op.drop_table("ferryman_transfer_parts")
    if not on_mariadb():  # there the index of a foreign key goes with its table only
        op.drop_index("ix_ferryman_transfers_run_id", "ferryman_transfers")
        op.drop_index("ix_ferryman_transfers_status_id", "ferryman_transfers")
        op.drop_index("ix_ferryman_transfers_active_object", "ferryman_transfers")
    op.drop_table("ferryman_transfers")
