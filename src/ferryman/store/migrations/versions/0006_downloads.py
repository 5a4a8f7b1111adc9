"""downloads and their parts (resumable ranged downloads from S3)

One row per destination path, unique by the SHA-256 of the path (a path
may be longer than an index entry holds); no partial index, so the table is
the same on every database. MariaDB commits each DDL statement at once:
every step here can run again, so an upgrade cut short is completed by
running it again.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import (
    MARIADB_TABLE,
    Digest,
    Id,
    LongText,
    Status,
    on_mariadb,
)

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    again = on_mariadb()  # MariaDB commits each step: a second run skips the done ones
    op.create_table(
        "ferryman_downloads",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("dest_digest", Digest, nullable=False),
        sa.Column("dest_path", LongText, nullable=False),
        sa.Column("temp_path", LongText, nullable=False),
        sa.Column("bucket", LongText, nullable=False),
        sa.Column("key", LongText, nullable=False),
        sa.Column("version_id", LongText),
        sa.Column("etag", LongText, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("part_size", sa.BigInteger, nullable=False),
        sa.Column("status", Status, nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("parts_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("expected", LongText),
        sa.Column("sha256", LongText),
        sa.Column("verified_by", LongText),
        sa.Column("reason", LongText),
        sa.Column("error", LongText),
        sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
        sa.PrimaryKeyConstraint("id", name="pk_ferryman_downloads"),
        sa.UniqueConstraint("dest_digest", name="uq_ferryman_downloads_dest_digest"),
        sa.CheckConstraint(
            "status IN ('active', 'succeeded', 'failed')",
            name="ck_ferryman_downloads_status",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )
    op.create_index(
        "ix_ferryman_downloads_status_id",
        "ferryman_downloads",
        ["status", "id"],
        if_not_exists=again,
    )
    op.create_table(
        "ferryman_download_parts",
        sa.Column("download_id", Id, nullable=False),
        sa.Column("part_number", sa.Integer, nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", LongText, nullable=False),
        sa.Column("confirmed_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("download_id", "part_number", name="pk_ferryman_download_parts"),
        sa.ForeignKeyConstraint(
            ["download_id"],
            ["ferryman_downloads.id"],
            name="fk_ferryman_download_parts_download_id_ferryman_downloads",
            ondelete="CASCADE",
        ),
        **MARIADB_TABLE,
        if_not_exists=again,
    )


def downgrade() -> None:
    op.drop_table("ferryman_download_parts")
    if not on_mariadb():
        op.drop_index("ix_ferryman_downloads_status_id", "ferryman_downloads")
    op.drop_table("ferryman_downloads")
