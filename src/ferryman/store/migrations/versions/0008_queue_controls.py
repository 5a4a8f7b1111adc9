"""priorities, due times, concurrency keys and the limits of jobs

* ``ferryman_runs.priority``: higher is claimed first; the due index holds it
  descending, before the due time, so a claim still walks it in order.
* ``ferryman_runs.concurrency_key`` and ``concurrency_digest`` (its SHA-256,
  see ``ferryman.store.keys``): runs of a job sharing a key are counted
  together; the digest keeps keys of any length countable by an index.
* ``ferryman_job_limits``: a row per job whose claims are limited, locked by
  those claims, holding the job's rate bucket.

Existing runs keep priority 0 and no key. MariaDB has no partial indexes: the
indexes lead with the status there, as in 0001.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ferryman.store.migrations.types import MARIADB_TABLE, Digest, LongText, Name, on_mariadb

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RUNS = "ferryman_runs"
LIMITS = "ferryman_job_limits"
# Runs without a key stay out of the index of running keys: plain jobs pay nothing for it.
RUNNING_KEYED = "status = 'running' AND concurrency_digest IS NOT NULL"


def upgrade() -> None:
    op.add_column(RUNS, sa.Column("priority", sa.Integer, nullable=False, server_default="0"))
    op.add_column(RUNS, sa.Column("concurrency_key", LongText))
    op.add_column(RUNS, sa.Column("concurrency_digest", Digest))
    op.drop_index("ix_ferryman_runs_due", RUNS)
    if on_mariadb():
        op.create_index(
            "ix_ferryman_runs_due",
            RUNS,
            ["status", "job", sa.text("priority DESC"), "available_at", "id"],
        )
        op.create_index(
            "ix_ferryman_runs_running_keys", RUNS, ["status", "job", "concurrency_digest"]
        )
    else:
        op.create_index(
            "ix_ferryman_runs_due",
            RUNS,
            ["job", sa.text("priority DESC"), "available_at", "id"],
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
        op.create_index(
            "ix_ferryman_runs_running_keys",
            RUNS,
            ["job", "concurrency_digest"],
            postgresql_where=sa.text(RUNNING_KEYED),
            sqlite_where=sa.text(RUNNING_KEYED),
        )
    op.create_table(
        LIMITS,
        sa.Column("job", Name, nullable=False),
        sa.Column("tokens", sa.Double),
        sa.Column("refilled_at", sa.Double),
        sa.PrimaryKeyConstraint("job", name="pk_ferryman_job_limits"),
        **MARIADB_TABLE,
    )


def downgrade() -> None:
    op.drop_table(LIMITS)
    op.drop_index("ix_ferryman_runs_running_keys", RUNS)
    op.drop_index("ix_ferryman_runs_due", RUNS)
    if on_mariadb():
        op.create_index("ix_ferryman_runs_due", RUNS, ["status", "job", "available_at", "id"])
    else:
        op.create_index(
            "ix_ferryman_runs_due",
            RUNS,
            ["job", "available_at", "id"],
            postgresql_where=sa.text("status = 'queued'"),
            sqlite_where=sa.text("status = 'queued'"),
        )
    with op.batch_alter_table(RUNS) as batch:
        batch.drop_column("concurrency_digest")
        batch.drop_column("concurrency_key")
        batch.drop_column("priority")
