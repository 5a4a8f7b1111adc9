"""an index on runs' finished_at, for throughput over the last hour

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ferryman_runs_finished_at", "ferryman_runs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_ferryman_runs_finished_at", "ferryman_runs")
