"""no index of running keys on SQLite: a limited claim reads the running runs' rows

``ix_ferryman_runs_running_keys`` (0013) gains an entry at every claim of a
run with a concurrency key and loses it at its end. On SQLite that upkeep
cost more than the read it serves: with short runs a claim reads about as
many running runs as it leases, and reading their keys from their rows
(found by ``ix_ferryman_runs_job_status``, which a claim updates anyway)
costs less than inserting and deleting an index entry per run (callgrind,
5,000 keyed runs at the worker's defaults: 25,000 instructions less per
run, and a sixteenth fewer pages written). PostgreSQL keeps it: a run's
rows there are visited at the pace of its visibility map, the index is
read without them. MariaDB keeps its index (no partial indexes there).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

RUNS = "ferryman_runs"
RUNNING_KEYS = "ix_ferryman_runs_running_keys"
RUNNING_KEYED = sa.text("status = 'running' AND concurrency_digest IS NOT NULL")


def _on_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _on_sqlite():
        op.drop_index(RUNNING_KEYS, RUNS)


def downgrade() -> None:
    if _on_sqlite():
        columns = ["job", "status", "id", "concurrency_digest"]
        op.create_index(RUNNING_KEYS, RUNS, columns, sqlite_where=RUNNING_KEYED)
