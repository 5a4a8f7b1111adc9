"""the index of running keys in the order of the runs: a claim's entries lie together

``ix_ferryman_runs_running_keys`` (0008) on ``(job, concurrency_digest)``
becomes ``(job, status, id, concurrency_digest)``, over the same rows
(running, with a key). Keys are hashes: by key, the entries a claim adds (and
a finish removes) each fall on a page of their own, and the read of a job's
running keys, which follows each entry to its row on PostgreSQL while the
table's visibility map lags behind, visits a page per run. By run, the runs
a claim leased (written together) have their entries and rows next to each
other. The key is still in the index, so that the read needs no row; the
status (one value in the index) makes the index match the read's two
equalities, as ``ix_ferryman_runs_job_status`` does, so that SQLite's
planner prefers it to that one, which would look each run's key up in the
table. MariaDB has no partial indexes: its index, which leads with the
status, is kept.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import on_mariadb

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

RUNS = "ferryman_runs"
RUNNING_KEYS = "ix_ferryman_runs_running_keys"
RUNNING_KEYED = sa.text("status = 'running' AND concurrency_digest IS NOT NULL")


def _replace(columns: list[str]) -> None:
    if on_mariadb():
        return
    op.drop_index(RUNNING_KEYS, RUNS)
    op.create_index(
        RUNNING_KEYS, RUNS, columns, postgresql_where=RUNNING_KEYED, sqlite_where=RUNNING_KEYED
    )


def upgrade() -> None:
    _replace(["job", "status", "id", "concurrency_digest"])


def downgrade() -> None:
    _replace(["job", "concurrency_digest"])
