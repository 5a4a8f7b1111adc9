"""CRC32 part checksums: the algorithm of each transfer's parts, and a CRC32 per part

New uploads send each part with its CRC32 and complete the object with S3's
full-object CRC32, combined from the parts'. A transfer made before keeps
SHA-256 parts, also when resumed: ``ferryman_transfers.checksum_algorithm``
is ``SHA256`` for every existing row, ``CRC32`` for new ones (written by the
store). ``ferryman_transfer_parts.sha256`` may now be NULL (a CRC32 part),
``ferryman_transfer_parts.crc32`` holds the CRC32 (base64, as S3 takes it).
Likewise ``ferryman_download_parts``: a download checked by the object's
full-object CRC32 records each range's CRC32 instead of its SHA-256.

SQLite alters a column's nullability by rebuilding the table (a batch).
A downgrade forgets the CRC32 parts and ranges, which an older ferryman
cannot check: they are sent (fetched) again.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import LongText, on_mariadb

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TRANSFERS = "ferryman_transfers"
PARTS = "ferryman_transfer_parts"
RANGES = "ferryman_download_parts"


def upgrade() -> None:
    if on_mariadb():  # before the generated column, where the declaration puts it
        op.execute(
            f"ALTER TABLE {TRANSFERS} ADD COLUMN checksum_algorithm VARCHAR(255) "
            "NOT NULL DEFAULT 'SHA256' AFTER finished_at"
        )
    else:
        op.add_column(
            TRANSFERS,
            sa.Column("checksum_algorithm", sa.Text, nullable=False, server_default="SHA256"),
        )
    for table in (PARTS, RANGES):
        with op.batch_alter_table(table) as parts:
            parts.alter_column("sha256", existing_type=LongText, nullable=True)
            parts.add_column(sa.Column("crc32", LongText))


def downgrade() -> None:
    for table in (PARTS, RANGES):
        op.execute(f"DELETE FROM {table} WHERE sha256 IS NULL")
        with op.batch_alter_table(table) as parts:
            parts.drop_column("crc32")
            parts.alter_column("sha256", existing_type=LongText, nullable=False)
    op.drop_column(TRANSFERS, "checksum_algorithm")
