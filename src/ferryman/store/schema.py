"""The store's tables, one definition for SQLite, PostgreSQL and MariaDB.

Times are seconds since the epoch as double precision, taken from the
database's own clock (see :mod:`ferryman.store.dialect`), so that leases held
by workers on different hosts are compared against one clock.

MariaDB differs in three ways, each declared here beside the table it changes
(docs/internals/mariadb.md has the reasons and the measurements):

* an indexed or key column needs a bounded type: names are ``VARCHAR(255)``,
  statuses ``VARCHAR(32)``, and everything else ``LONGTEXT`` (``TEXT`` stops at
  64 KiB); keys of any length stay unique through their SHA-256 digests;
* tables are InnoDB in ``utf8mb4_nopad_bin``, so that ``'A'``/``'a'``,
  ``'é'``/``'e'`` and ``'a'``/``'a '`` stay distinct keys, as on PostgreSQL;
* it has no partial indexes: a partial index leads with the column of its
  predicate there instead, and a unique partial index becomes a unique index
  on a generated column that is NULL outside the index's rows
  (:class:`MariaDBUniqueWhere`).

The migrations under ``migrations/versions`` must produce exactly these
tables; ``tests/unit/test_store_setup.py`` and ``test_mariadb_schema.py``
compare the two (:func:`ferryman.store.migrate.differences`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from ferryman.store.run_key_sql import RUN_KEY_PREFIX, run_key_start

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLAlchemy's names for MariaDB: ``mariadb://`` URLs, and ``mysql://`` ones.
MARIADB = ("mariadb", "mysql")
# The longest job, sensor and worker name a MariaDB store holds, in characters:
# they are keys of indexes there, and an index entry is bounded (3072 bytes,
# 4 per character in utf8mb4). SQLite and PostgreSQL take any length.
NAME_LENGTH = 255
STATUS_LENGTH = 32  # the longest status value is 9 characters

# Tables on MariaDB: InnoDB (transactions, row locks, SKIP LOCKED), and a
# binary collation that pads no spaces, so that keys compare as PostgreSQL's
# do: byte for byte ('a ' != 'a', 'A' != 'a', 'é' != 'e').
MARIADB_TABLE: dict[str, Any] = {
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_nopad_bin",
}

# BIGINT ids on PostgreSQL and MariaDB; SQLite only makes INTEGER PRIMARY KEY an
# alias of the rowid.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Epoch: sa.Double[float] = sa.Double()
# Text of any length. MariaDB's TEXT holds 64 KiB at most; LONGTEXT 4 GiB.
LongText = sa.Text().with_variant(mysql.LONGTEXT(), *MARIADB)
# Text that MariaDB indexes: bounded there (see NAME_LENGTH), unbounded elsewhere.
Name = sa.Text().with_variant(sa.String(NAME_LENGTH), *MARIADB)
Status = sa.Text().with_variant(sa.String(STATUS_LENGTH), *MARIADB)
# JSON documents are stored as text: identical on every backend, and ferryman
# never queries inside them.
JsonText = LongText
# SHA-256 of a key (see ferryman.store.keys): unique where the key itself may be
# too long for a B-tree entry.
Digest = sa.LargeBinary().with_variant(mysql.BINARY(32), *MARIADB)


_Made = TypeVar("_Made", sa.Index, sa.ForeignKeyConstraint)


def _created_when(mariadb: bool) -> Any:
    """The ``ddl_if`` condition of an index made on MariaDB alone, or everywhere else."""
    return _created_on_dialects(lambda name: (name in MARIADB) == mariadb)


def _created_on_dialects(wanted: Callable[[str], bool]) -> Any:
    """The ``ddl_if`` condition of an index made on the dialects ``wanted`` names."""

    def when(*_ddl_target_bind: object, dialect: sa.Dialect, **kw: Any) -> bool:
        return wanted(dialect.name)

    return when


def mariadb_only(index: sa.Index) -> sa.Index:
    """Create ``index`` on MariaDB alone (it stands in for a partial index there)."""
    index.info["mariadb"] = True
    return index.ddl_if(callable_=_created_when(True))


def except_mariadb(index: sa.Index) -> sa.Index:
    """Create ``index`` on SQLite and PostgreSQL alone (a partial index)."""
    index.info["mariadb"] = False
    return index.ddl_if(callable_=_created_when(False))


def postgresql_only(index: sa.Index) -> sa.Index:
    """Create ``index`` on PostgreSQL alone."""
    index.info["postgresql"] = True
    return index.ddl_if(dialect="postgresql")


def partial(predicate: sa.ColumnElement[bool]) -> dict[str, Any]:
    """The options of an index over the rows ``predicate`` holds for (SQLite, PostgreSQL)."""
    return {"postgresql_where": predicate, "sqlite_where": predicate}


def except_postgresql(made: _Made) -> _Made:
    """Create the index or constraint ``made`` on SQLite and MariaDB alone."""
    made.info["postgresql"] = False
    return made.ddl_if(callable_=_created_on_dialects(lambda name: name != "postgresql"))


def created_on(index: sa.Index | sa.ForeignKeyConstraint, dialect: str) -> bool:
    """Whether ``index`` (or a foreign key) exists in a store on ``dialect``."""
    postgresql: bool | None = index.info.get("postgresql")
    if postgresql is not None:
        return (dialect == "postgresql") == postgresql
    only = index.info.get("mariadb")
    return only is None or only == (dialect in MARIADB)


@dataclass(frozen=True, slots=True, kw_only=True)
class MariaDBUniqueWhere:
    """A unique partial index, as MariaDB (which has none) holds it.

    A stored generated column holds the SHA-256 of the indexed columns (NUL
    between them) where the row satisfies the predicate, and NULL elsewhere; a
    unique index on it, under the partial index's name, admits any number of
    NULLs, so it refuses exactly what the partial index refuses, whatever the
    columns' lengths. The column is stored (``PERSISTENT``) rather than
    virtual so that InnoDB never evaluates the expression again to maintain
    the index (in purge and rollback); it costs 33 bytes a row.
    """

    index: sa.Index  # the partial index it stands for on SQLite and PostgreSQL
    column: str
    predicate: str  # the partial index's WHERE, in MariaDB's SQL

    @property
    def table(self) -> sa.Table:
        table = self.index.table
        assert isinstance(table, sa.Table)
        return table

    @property
    def expression(self) -> str:
        names = [f"`{column.name}`" for column in self.index.columns]
        value = names[0] if len(names) == 1 else f"CONCAT({', CHAR(0), '.join(names)})"
        return f"IF({self.predicate}, UNHEX(SHA2({value}, 256)), NULL)"

    def ddl(self) -> str:
        """The ALTER TABLE that adds the column and its unique index."""
        return (
            f"ALTER TABLE {self.table.name} ADD COLUMN IF NOT EXISTS `{self.column}` "
            f"BINARY(32) AS ({self.expression}) PERSISTENT, "
            f"ADD UNIQUE INDEX IF NOT EXISTS {self.index.name} (`{self.column}`)"
        )

    def attach(self) -> None:
        """Add the column and index whenever the table is created on MariaDB."""
        sa.event.listen(self.table, "after_create", self._after_create)

    def _after_create(self, _table: sa.Table, connection: sa.Connection, **_kw: Any) -> None:
        if connection.dialect.name in MARIADB:
            connection.exec_driver_sql(self.ddl())


runs = sa.Table(
    "ferryman_runs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("job", Name, nullable=False),
    sa.Column("run_key", LongText, nullable=False),
    sa.Column("key_digest", Digest, nullable=False),  # keys.run_key_digest(job, run_key)
    sa.Column("payload", JsonText, nullable=False),
    sa.Column("status", Status, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("available_at", Epoch, nullable=False),
    sa.Column("lease_owner", LongText),
    sa.Column("lease_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", Epoch),
    sa.Column("checkpoint", JsonText),
    sa.Column("last_error", LongText),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("started_at", Epoch),
    sa.Column("finished_at", Epoch),
    # Higher is claimed first; within a priority, by due time (available_at), then id.
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    # Runs of one job sharing a key are limited together (key_concurrency); counted
    # by the key's digest (keys.concurrency_key_digest), so a key of any length fits.
    sa.Column("concurrency_key", LongText),
    sa.Column("concurrency_digest", Digest),
    sa.UniqueConstraint("key_digest"),
    sa.CheckConstraint(
        "status IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled')",
        name="ck_ferryman_runs_status",
    ),
    **MARIADB_TABLE,
)
# Claims read each job's due queue in order; a partial index keeps it small
# however many finished runs the table holds, and leading with the job lets a
# claim walk it in order even when the planner's statistics are stale (right
# after a bulk enqueue) instead of sorting every due run.
# Higher priorities first: the index holds the priority descending, so that the
# claim's order (priority DESC, available_at, id) is the index's own.
except_mariadb(
    sa.Index(
        "ix_ferryman_runs_due",
        runs.c.job,
        runs.c.priority.desc(),
        runs.c.available_at,
        runs.c.id,
        **partial(runs.c.status == "queued"),
    )
)
# A job's running keys, read by its limited claims, in run order (0013); not on SQLite (0014).
postgresql_only(
    sa.Index(
        "ix_ferryman_runs_running_keys",
        runs.c.job,
        runs.c.status,
        runs.c.id,
        runs.c.concurrency_digest,
        **partial(sa.and_(runs.c.status == "running", runs.c.concurrency_digest.is_not(None))),
    )
)
except_mariadb(
    sa.Index(
        "ix_ferryman_runs_leases",
        runs.c.lease_expires_at,
        **partial(runs.c.status == "running"),
    )
)
# MariaDB has no partial indexes: the same indexes lead with the status there, so
# that a claim's equality on it reads the same entries in the same order.
mariadb_only(
    sa.Index(
        "ix_ferryman_runs_due",
        runs.c.status,
        runs.c.job,
        runs.c.priority.desc(),
        runs.c.available_at,
        runs.c.id,
    )
)
mariadb_only(
    sa.Index("ix_ferryman_runs_running_keys", runs.c.status, runs.c.job, runs.c.concurrency_digest)
)
mariadb_only(sa.Index("ix_ferryman_runs_leases", runs.c.status, runs.c.lease_expires_at))
sa.Index("ix_ferryman_runs_job_status", runs.c.job, runs.c.status, runs.c.id)
# Runs of one status, newest first; on PostgreSQL not the queued ones (0010):
# the claim index holds those, and the primary key finds them (the newest runs).
sa.Index(
    "ix_ferryman_runs_status_id",
    runs.c.status,
    runs.c.id,
    postgresql_where=runs.c.status != "queued",
)
# The runs list within a time window reads it in creation order from here.
sa.Index("ix_ferryman_runs_created_at", runs.c.created_at, runs.c.id)
# Throughput per minute (the last hour), the history and pruning: each bounds
# finished_at, so runs not finished need no entry (no partial index on MariaDB).
sa.Index(
    "ix_ferryman_runs_finished_at", runs.c.finished_at, **partial(runs.c.finished_at.is_not(None))
)
# Run keys compared in SQL (ferryman.store.run_key_sql): a B-tree on the keys
# on SQLite, on their first characters on MariaDB; on PostgreSQL the prefix
# index below finds them (migration 0010).
except_postgresql(
    sa.Index("ix_ferryman_runs_run_key", runs.c.run_key, mariadb_length={"run_key": RUN_KEY_PREFIX})
)
# A run_key prefix is a range of the keys (run_search); a whole key, see run_key_sql.
postgresql_only(sa.Index("ix_ferryman_runs_run_key_prefix", run_key_start(runs.c.run_key)))


# Read models carried forward rather than recomputed (ferryman.store.run_tally):
# a name, the last processing-log id included, the model as JSON.
read_snapshots = sa.Table(
    "ferryman_read_snapshots",
    metadata,
    sa.Column("name", Name, primary_key=True),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("body", JsonText, nullable=False),
    sa.Column("taken_at", Epoch, nullable=False),
    **MARIADB_TABLE,
)

# One row per job whose claims are limited (concurrency, rate) or whose runs
# carry concurrency keys: claims of such a job lock it, so that they count the
# running runs one after another, and it holds the job's rate bucket.
job_limits = sa.Table(
    "ferryman_job_limits",
    metadata,
    sa.Column("job", Name, primary_key=True),
    sa.Column("tokens", Epoch),  # the rate bucket: tokens left at refilled_at
    sa.Column("refilled_at", Epoch),
    **MARIADB_TABLE,
)

run_events = sa.Table(
    "ferryman_run_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", Id, nullable=False),
    sa.Column("kind", LongText, nullable=False),
    sa.Column("at", Epoch, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_id", LongText),
    sa.Column("lease_token", sa.BigInteger),
    sa.Column("detail", JsonText),
    **MARIADB_TABLE,
)
sa.Index("ix_ferryman_run_events_run_id", run_events.c.run_id, run_events.c.id)
# A worker's claims, newest runs first (run_search); other rows stay out but on MariaDB,
# which has no partial indexes and finds the claims by the kind (0012).
sa.Index(
    "ix_ferryman_run_events_worker_id",
    *(run_events.c.worker_id, run_events.c.kind, run_events.c.run_id),
    mariadb_length={"worker_id": NAME_LENGTH, "kind": STATUS_LENGTH},
    **partial(run_events.c.kind == sa.literal_column("'claimed'")),
)
# The store writes each log row with or after its run, never deleted (pruning
# empties it): PostgreSQL's check, a fifth of a batched enqueue, is left out (0010).
except_postgresql(sa.ForeignKeyConstraint([run_events.c.run_id], [runs.c.id], ondelete="CASCADE"))

sensors = sa.Table(
    "ferryman_sensors",
    metadata,
    sa.Column("name", Name, primary_key=True),
    sa.Column("kind", LongText, nullable=False),
    sa.Column("cursor", LongText),
    sa.Column("state_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("status", LongText, nullable=False, server_default="running"),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_evaluation_at", Epoch),
    sa.Column("last_evaluation_at", Epoch),
    sa.Column("updated_at", Epoch, nullable=False),
    **MARIADB_TABLE,
)

sensor_evaluations = sa.Table(
    "ferryman_sensor_evaluations",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "sensor",
        Name,
        sa.ForeignKey("ferryman_sensors.name", ondelete="CASCADE"),
        nullable=False,
    ),
    # poll:{sensor}:{state_version}, or push:{sensor}:{message_id} (kept for
    # readers; push deliveries are unique in ferryman_push_deliveries).
    sa.Column("idempotency_key", LongText),
    sa.Column("message_id", LongText),  # push evaluations: the message, in full
    sa.Column("outcome", LongText, nullable=False),
    sa.Column("cursor_before", LongText),
    sa.Column("cursor_after", LongText),
    sa.Column("state_version_before", sa.BigInteger, nullable=False),
    sa.Column("state_version_after", sa.BigInteger),
    sa.Column("runs_requested", sa.Integer, nullable=False, server_default="0"),
    sa.Column("runs_deduplicated", sa.Integer, nullable=False, server_default="0"),
    sa.Column("items_skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("run_ids", JsonText),
    sa.Column("error", LongText),
    sa.Column("evaluator", LongText),
    sa.Column("started_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch, nullable=False),
    **MARIADB_TABLE,
)
sa.Index(
    "ix_ferryman_sensor_evaluations_sensor",
    sensor_evaluations.c.sensor,
    sensor_evaluations.c.id,
)
# One evaluation per poll state version: a second line of defence behind the
# compare-and-swap on the sensor's state_version.
POLL_KEY = MariaDBUniqueWhere(
    index=except_mariadb(
        sa.Index(
            "ix_ferryman_sensor_evaluations_poll_key",
            sensor_evaluations.c.idempotency_key,
            unique=True,
            postgresql_where=sensor_evaluations.c.message_id.is_(None),
            sqlite_where=sensor_evaluations.c.message_id.is_(None),
        )
    ),
    column="poll_key_digest",
    predicate="`message_id` IS NULL",
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
        Name,
        sa.ForeignKey("ferryman_sensors.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("message_digest", Digest, nullable=False),  # keys.message_digest(message_id)
    sa.Column("message_id", LongText, nullable=False),
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
    **MARIADB_TABLE,
)
sa.Index("ix_ferryman_push_deliveries_delivered_at", push_deliveries.c.delivered_at)
sa.Index("ix_ferryman_push_deliveries_evaluation_id", push_deliveries.c.evaluation_id)

workers = sa.Table(
    "ferryman_workers",
    metadata,
    sa.Column("id", Name, primary_key=True),
    sa.Column("host", LongText, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("jobs", JsonText, nullable=False),
    sa.Column("started_at", Epoch, nullable=False),
    sa.Column("last_seen_at", Epoch, nullable=False),
    sa.Column("stopped_at", Epoch),
    # crashes of its supervised threads (ferryman.supervise), the last one's and why
    sa.Column("crashes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_crash", LongText),
    **MARIADB_TABLE,
)

# One row per resumable upload of a local file to an S3 object (ferryman.transfer).
# ``owner_token`` fences its writes as ``lease_token`` does a run's.
transfers = sa.Table(
    "ferryman_transfers",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("source_path", LongText, nullable=False),
    sa.Column("bucket", LongText, nullable=False),
    sa.Column("key", LongText, nullable=False),
    sa.Column("status", Status, nullable=False),
    sa.Column("follow", sa.Boolean, nullable=False),
    sa.Column("part_size", sa.BigInteger, nullable=False),
    sa.Column("upload_id", LongText),
    sa.Column("source_size", sa.BigInteger),
    sa.Column("source_mtime", Epoch),
    sa.Column("bytes_confirmed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("parts_confirmed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_size", sa.BigInteger),
    sa.Column("sha256", LongText),
    sa.Column("checksum", LongText),
    sa.Column("etag", LongText),
    sa.Column("verified_by", LongText),
    sa.Column("reason", LongText),
    sa.Column("error", LongText),
    sa.Column("user_metadata", JsonText),
    sa.Column("sidecar_key", LongText),
    sa.Column(
        "run_id",
        Id,
        sa.ForeignKey("ferryman_runs.id", ondelete="SET NULL"),
    ),
    sa.Column("owner", LongText),
    sa.Column("owner_token", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", Epoch),
    sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch),
    sa.Column("checksum_algorithm", Name, nullable=False, server_default="SHA256"),
    sa.CheckConstraint(
        "status IN ('active', 'succeeded', 'failed')",
        name="ck_ferryman_transfers_status",
    ),
    **MARIADB_TABLE,
)
# At most one active transfer writes an object: a second upload to the same
# key would race the first one's CompleteMultipartUpload.
ACTIVE_OBJECT = MariaDBUniqueWhere(
    index=except_mariadb(
        sa.Index(
            "ix_ferryman_transfers_active_object",
            transfers.c.bucket,
            transfers.c.key,
            unique=True,
            postgresql_where=transfers.c.status == "active",
            sqlite_where=transfers.c.status == "active",
        )
    ),
    column="active_object_digest",
    predicate="`status` = 'active'",
)
sa.Index("ix_ferryman_transfers_status_id", transfers.c.status, transfers.c.id)
sa.Index("ix_ferryman_transfers_run_id", transfers.c.run_id)

# A part counts once S3 returned its ETag and its row committed.
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
    sa.Column("etag", LongText, nullable=False),
    sa.Column("sha256", LongText),  # parts of transfers made before 0011, and whole puts
    sa.Column("adopted", sa.Boolean, nullable=False),
    sa.Column("owner_token", sa.BigInteger, nullable=False),
    sa.Column("confirmed_at", Epoch, nullable=False),
    sa.Column("crc32", LongText),
    sa.PrimaryKeyConstraint("transfer_id", "part_number"),
    **MARIADB_TABLE,
)

# MariaDB's stand-ins for unique partial indexes (generated columns no query reads).
MARIADB_UNIQUE_WHERE = (POLL_KEY, ACTIVE_OBJECT)
for _unique_where in MARIADB_UNIQUE_WHERE:
    _unique_where.attach()

# One row per destination path of `ferryman download` (the latest download to
# it): the object pinned by its ETag (and version), the part size, how far it
# got. ``dest_digest`` (SHA-256 of the destination path) is the unique key, the
# path itself being of any length.
downloads = sa.Table(
    "ferryman_downloads",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("dest_digest", Digest, nullable=False),
    sa.Column("dest_path", LongText, nullable=False),
    sa.Column("temp_path", LongText, nullable=False),
    sa.Column("bucket", LongText, nullable=False),
    sa.Column("key", LongText, nullable=False),
    sa.Column("version_id", LongText),
    sa.Column("etag", LongText, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("part_size", sa.BigInteger, nullable=False),
    sa.Column("status", Status, nullable=False),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("parts_done", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expected", LongText),
    sa.Column("sha256", LongText),
    sa.Column("verified_by", LongText),
    sa.Column("reason", LongText),
    sa.Column("error", LongText),
    sa.Column("resumes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", Epoch, nullable=False),
    sa.Column("updated_at", Epoch, nullable=False),
    sa.Column("finished_at", Epoch),
    sa.UniqueConstraint("dest_digest"),
    sa.CheckConstraint(
        "status IN ('active', 'succeeded', 'failed')",
        name="ck_ferryman_downloads_status",
    ),
    **MARIADB_TABLE,
)
sa.Index("ix_ferryman_downloads_status_id", downloads.c.status, downloads.c.id)

# A part counts once its bytes are in the temporary file and this row committed.
download_parts = sa.Table(
    "ferryman_download_parts",
    metadata,
    sa.Column(
        "download_id",
        Id,
        sa.ForeignKey("ferryman_downloads.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("part_number", sa.Integer, nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", LongText),  # or, checked by the object's full-object CRC32:
    sa.Column("confirmed_at", Epoch, nullable=False),
    sa.Column("crc32", LongText),
    sa.PrimaryKeyConstraint("download_id", "part_number"),
    **MARIADB_TABLE,
)
