"""an index of the processing log by worker: a worker's runs without reading the whole log

``ix_ferryman_run_events_worker_id`` on ``(worker_id, kind, run_id)``: the
runs a worker claimed, newest first, are a range of it
(:mod:`ferryman.store.run_search`), whether or not the store has a row for
the worker in ``ferryman_workers``. On SQLite and PostgreSQL it holds the
claims alone (``kind = 'claimed'``), so that a run costs one entry, written
with its claim, and its other log rows (requested, succeeded, ...) none;
MariaDB has no partial indexes: it indexes every row, by the first
characters of both texts.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

EVENTS = "ferryman_run_events"
BY_WORKER = "ix_ferryman_run_events_worker_id"
CLAIMS = sa.text("kind = 'claimed'")


def upgrade() -> None:
    op.create_index(
        BY_WORKER,
        EVENTS,
        ["worker_id", "kind", "run_id"],
        postgresql_where=CLAIMS,
        sqlite_where=CLAIMS,
        mariadb_length={"worker_id": 255, "kind": 32},
    )


def downgrade() -> None:
    op.drop_index(BY_WORKER, EVENTS)
