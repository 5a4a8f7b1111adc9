"""read snapshots, and run_key prefixes by index on PostgreSQL

* ``ferryman_read_snapshots``: read models carried forward from the
  processing log rather than recomputed, such as the runs by job and status
  of the overview and ``/metrics`` (``ferryman.store.run_tally``): a name,
  the last log id included and the model as JSON. Empty at first: the first
  reader counts once and fills it.
* ``ix_ferryman_runs_run_key_prefix`` (PostgreSQL): a B-tree over the first
  255 characters of the run_key in byte order (``COLLATE "C"``), so that a
  prefix search is a range of it; the run_key index there is a hash, which
  answers equality only. SQLite's and MariaDB's run_key indexes are B-trees
  already. No claim or finish writes run_key, so updates stay HOT.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import MARIADB_TABLE, LongText, Name

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SNAPSHOTS = "ferryman_read_snapshots"
PREFIX_INDEX = "ix_ferryman_runs_run_key_prefix"
KEY_START = "(left(run_key, 255))"


def upgrade() -> None:
    op.create_table(
        SNAPSHOTS,
        sa.Column("name", Name, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("body", LongText, nullable=False),
        sa.Column("taken_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ferryman_read_snapshots"),
        **MARIADB_TABLE,
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'CREATE INDEX {PREFIX_INDEX} ON ferryman_runs ({KEY_START} COLLATE "C")')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(PREFIX_INDEX, "ferryman_runs")
    op.drop_table(SNAPSHOTS)
