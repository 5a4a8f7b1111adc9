"""the crashes of a worker process's background threads, shown by status and the dashboard

``ferryman_workers.crashes`` counts the crashes of the process's supervised
threads since the worker started; ``last_crash`` says which thread and why.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import LongText

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WORKERS = "ferryman_workers"


def upgrade() -> None:
    op.add_column(WORKERS, sa.Column("crashes", sa.Integer, nullable=False, server_default="0"))
    op.add_column(WORKERS, sa.Column("last_crash", LongText))


def downgrade() -> None:
    with op.batch_alter_table(WORKERS) as batch:
        batch.drop_column("last_crash")
        batch.drop_column("crashes")
