"""less to write per run: three index entries and a key check less on PostgreSQL, one on SQLite

* ``ix_ferryman_runs_finished_at`` holds finished runs only (PostgreSQL,
  SQLite): every query on it bounds ``finished_at`` (throughput per minute,
  the history, pruning), which implies it is not NULL, so a queued or running
  run needs no entry.
* ``ix_ferryman_runs_status_id`` leaves queued runs out (PostgreSQL): the
  claim index holds every queued run, and listing the queued ones newest
  first walks the primary key backwards (they are the newest runs). SQLite
  uses a partial index only for a query that repeats its predicate, so it
  keeps the whole index.
* ``ix_ferryman_runs_run_key``, a hash index, is dropped (PostgreSQL): a run
  key is found by ``ix_ferryman_runs_run_key_prefix`` (migration 0009), by its
  first characters and then the whole key (``ferryman.store.run_key_sql.SameRunKey``).
* ``ferryman_run_events`` loses its foreign key to ``ferryman_runs``
  (PostgreSQL): checking it cost about a fifth of a batched enqueue's server
  time, and every log row is written by the store with or after its run, which
  is never deleted (pruning empties it). SQLite (where dropping it means
  rebuilding the table) and MariaDB keep theirs.

MariaDB has no partial indexes: nothing changes there.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

RUNS = "ferryman_runs"
FINISHED_AT = "ix_ferryman_runs_finished_at"
STATUS_ID = "ix_ferryman_runs_status_id"
RUN_KEY = "ix_ferryman_runs_run_key"
EVENTS = "ferryman_run_events"
RUN_ID_KEY = "fk_ferryman_run_events_run_id_ferryman_runs"
FINISHED = "finished_at IS NOT NULL"
NOT_QUEUED = "status != 'queued'"


def upgrade() -> None:
    _lighten(True)


def downgrade() -> None:
    _lighten(False)


def _lighten(lighter: bool) -> None:
    """The indexes of 0010 (``lighter``), or back to those of 0009."""
    dialect = op.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return
    _recreate(FINISHED_AT, ["finished_at"], where=FINISHED if lighter else None)
    if dialect == "postgresql":
        _recreate(STATUS_ID, ["status", "id"], where=NOT_QUEUED if lighter else None)
        if lighter:
            op.drop_index(RUN_KEY, RUNS)
            op.drop_constraint(RUN_ID_KEY, EVENTS, type_="foreignkey")
        else:
            op.create_index(RUN_KEY, RUNS, ["run_key"], postgresql_using="hash")
            op.create_foreign_key(RUN_ID_KEY, EVENTS, RUNS, ["run_id"], ["id"], ondelete="CASCADE")


def _recreate(name: str, columns: list[str], *, where: str | None) -> None:
    """Drop index ``name`` and create it again over ``columns``, partial where ``where``."""
    op.drop_index(name, RUNS)
    predicate = None if where is None else sa.text(where)
    op.create_index(name, RUNS, columns, postgresql_where=predicate, sqlite_where=predicate)
