"""an index on runs' (created_at, id), for the runs list within a time window

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ferryman_runs_created_at", "ferryman_runs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_ferryman_runs_created_at", "ferryman_runs")
