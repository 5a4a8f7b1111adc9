"""The store's tables, one definition for SQLite and PostgreSQL.

Times are seconds since the epoch as double precision, taken from the
database's own clock (see :mod:`ferryman.store.dialect`), so that leases held
by workers on different hosts are compared against one clock.

The migrations under ``migrations/versions`` must produce exactly these
tables; ``tests/unit/test_migrations.py`` compares the two.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BIGINT ids on PostgreSQL; SQLite only makes INTEGER PRIMARY KEY an alias of the rowid.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Epoch: sa.Double[float] = sa.Double()
# JSON documents are stored as text: identical on both backends, and ferryman
# never queries inside them.
JsonText = sa.Text
# SHA-256 of a key (see ferryman.store.keys): unique where the key itself may be
# too long for a B-tree entry.
Digest = sa.LargeBinary

runs = sa.Table(
    "ferryman_runs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("run_key", sa.Text, nullable=False),
    sa.Column("key_digest", Digest, nullable=False),  # keys.run_key_digest(job, run_key)
    sa.Column("payload", JsonText, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("available_at", Epoch, nullable=False),
    sa.Column("lease_owner", sa.Text),
    sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", Epoch),
    sa.Column("checkpoint", JsonText),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("started_at", Epoch),
    sa.Column("finished_at", Epoch),
    sa.UniqueConstraint("key_digest"),
    sa.CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
        name="ck_ferryman_runs_status",
    ),
)
# Claims read each job's due queue in order; a partial index keeps it small
# however many finished runs the table holds, and leading with the job lets a
# claim walk it in order even when the planner's statistics are stale (right
# after a bulk enqueue) instead of sorting every due run.
sa.Index(
    "ix_ferryman_runs_due",
    runs.c.job,
    runs.c.available_at,
    runs.c.id,
    postgresql_where=runs.c.status == "queued",
    sqlite_where=runs.c.status == "queued",
)
sa.Index(
    "ix_ferryman_runs_leases",
    runs.c.lease_expires_at,
    postgresql_where=runs.c.status == "running",
    sqlite_where=runs.c.status == "running",
)
sa.Index("ix_ferryman_runs_job_status", runs.c.job, runs.c.status, runs.c.id)
sa.Index("ix_ferryman_runs_status_id", runs.c.status, runs.c.id)
# The runs list within a time window reads it in creation order from here.
sa.Index("ix_ferryman_runs_created_at", runs.c.created_at, runs.c.id)
# Throughput per minute on the dashboard and in /metrics reads the last hour only.
sa.Index("ix_ferryman_runs_finished_at", runs.c.finished_at)
# The SQL table sensor's anti-join compares run keys in SQL, where no digest can
# be computed on SQLite. A hash index (PostgreSQL) takes keys of any length; on
# SQLite, which has no such limit, the same declaration is a plain B-tree.
sa.Index("ix_ferryman_runs_run_key", runs.c.run_key, postgresql_using="hash")

run_events = sa.Table(
    "ferryman_run_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "run_id",
        Id,
        sa.ForeignKey("ferryman_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("at", Epoch, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.Text),
    sa.Column("lease_token", sa.BigInteger),
    sa.Column("detail", JsonText),
)
sa.Index("ix_ferryman_run_events_run_id", run_events.c.run_id, run_events.c.id)

sensors = sa.Table(
    "ferryman_sensors",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("cursor", sa.Text),
    sa.Column("state_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False, server_default="running"),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_evaluation_at", Epoch),
    sa.Column("last_evaluation_at", Epoch),
    sa.Column("updated_at", Epoch, nullable=False),
)

sensor_evaluations = sa.Table(
    "ferryman_sensor_evaluations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "sensor",
        sa.Text,
        sa.ForeignKey("ferryman_sensors.name", ondelete="CASCADE"),
        nullable=False,
    ),
    # poll:{sensor}:{state_version}, or push:{sensor}:{message_id} (kept for
    # readers; push deliveries are unique in ferryman_push_deliveries).
    sa.Column("idempotency_key", sa.Text),
    sa.Column("message_id", sa.Text),  # push evaluations: the message, in full
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("cursor_before", sa.Text),
    sa.Column("cursor_after", sa.Text),
    sa.Column("state_version_before", sa.BigInteger, nullable=False),
    sa.Column("state_version_after", sa.BigInteger),
    sa.Column("runs_requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runs_deduplicated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("items_skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_ids", JsonText),
    sa.Column("error", sa.Text),
    sa.Column("evaluator", sa.Text),
    sa.Column("started_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch, nullable=False),
)
sa.Index(
    "ix_ferryman_sensor_evaluations_sensor",
    sensor_evaluations.c.sensor,
    sensor_evaluations.c.id,
)
# One evaluation per poll state version: a second line of defence behind the
# compare-and-swap on the sensor's state_version.
sa.Index(
    "ix_ferryman_sensor_evaluations_poll_key",
    sensor_evaluations.c.idempotency_key,
    unique=True,
    postgresql_where=sensor_evaluations.c.message_id.is_(None),
    sqlite_where=sensor_evaluations.c.message_id.is_(None),
)

# One row per push message delivered to a sensor: its redeliveries are
# recognised here, for ``delivery_retention`` after the delivery, however much
# evaluation history has been pruned. The evaluation it names is kept as long
# as the row (pruning evaluations skips it), so a redelivery gets it back.
push_deliveries = sa.Table(
    "ferryman_push_deliveries",
    metadata,
    sa.Column(
        "sensor",
        sa.Text,
        sa.ForeignKey("ferryman_sensors.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("message_digest", Digest, nullable=False),  # keys.message_digest(message_id)
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column(
        "evaluation_id",
        Id,
        # named by hand: the naming convention's name passes PostgreSQL's 63 characters
        sa.ForeignKey(
            "ferryman_sensor_evaluations.id", name="fk_ferryman_push_deliveries_evaluation_id"
        ),
        nullable=False,
    ),
    sa.Column("delivered_at", Epoch, nullable=False),
    sa.PrimaryKeyConstraint("sensor", "message_digest"),
)
sa.Index("ix_ferryman_push_deliveries_delivered_at", push_deliveries.c.delivered_at)
sa.Index("ix_ferryman_push_deliveries_evaluation_id", push_deliveries.c.evaluation_id)

workers = sa.Table(
    "ferryman_workers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("jobs", JsonText, nullable=False),
    sa.Column("started_at", Epoch, nullable=False),
    sa.Column("last_seen_at", Epoch, nullable=False),
    sa.Column("stopped_at", Epoch),
)

# One row per resumable upload of a local file to an S3 object (see
# ferryman.transfer). ``owner_token`` fences the transfer's writes the way
# ``lease_token`` fences a run's: taking a transfer over increments it.
transfers = sa.Table(
    "ferryman_transfers",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("source_path", sa.Text, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("follow", sa.Boolean, nullable=False),
    sa.Column("part_size", sa.BigInteger, nullable=False),
    sa.Column("upload_id", sa.Text),
    sa.Column("source_size", sa.BigInteger),
    sa.Column("source_mtime", Epoch),
    sa.Column("bytes_confirmed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("parts_confirmed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_size", sa.BigInteger),
    sa.Column("sha256", sa.Text),
    sa.Column("checksum", sa.Text),
    sa.Column("etag", sa.Text),
    sa.Column("verified_by", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("user_metadata", JsonText),
    sa.Column("sidecar_key", sa.Text),
    sa.Column(
        "run_id",
        Id,
        sa.ForeignKey("ferryman_runs.id", ondelete="SET NULL"),
    ),
    sa.Column("owner", sa.Text),
    sa.Column("owner_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", Epoch),
    sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch),
    sa.CheckConstraint(
        "status IN ('active', 'succeeded', 'failed')",
        name="ck_ferryman_transfers_status",
    ),
)
# At most one active transfer writes an object: a second upload to the same
# key would race the first one's CompleteMultipartUpload.
sa.Index(
    "ix_ferryman_transfers_active_object",
    transfers.c.bucket,
    transfers.c.key,
    unique=True,
    postgresql_where=transfers.c.status == "active",
    sqlite_where=transfers.c.status == "active",
)
sa.Index("ix_ferryman_transfers_status_id", transfers.c.status, transfers.c.id)
sa.Index("ix_ferryman_transfers_run_id", transfers.c.run_id)

# A part counts once S3 returned its ETag *and* its row committed here.
transfer_parts = sa.Table(
    "ferryman_transfer_parts",
    metadata,
    sa.Column(
        "transfer_id",
        Id,
        sa.ForeignKey("ferryman_transfers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("part_number", sa.Integer, nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("adopted", sa.Boolean, nullable=False),
    sa.Column("owner_token", sa.BigInteger, nullable=False),
    sa.Column("confirmed_at", Epoch, nullable=False),
    sa.PrimaryKeyConstraint("transfer_id", "part_number"),
)
