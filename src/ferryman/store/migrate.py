"""Schema revisions: check at start-up, upgrade on request (or on first use of SQLite).

Concurrent upgrades are serialised: on SQLite by the write transaction, on
PostgreSQL by a transaction-scoped advisory lock, on MariaDB by a named lock
(:func:`upgrade_lock`) held across the upgrade's commit.

MariaDB's DDL is not transactional: each CREATE, ALTER and DROP commits at
once. An upgrade cut short there (the server or the process died, a statement
failed) leaves the steps it made in place and the revision unchanged. The
MariaDB steps of every migration can run again (``IF NOT EXISTS``,
``IF EXISTS``, updates that compute the same values again), so running the
upgrade again completes it; until then ferryman refuses the store as one at
the old revision.

Alembic is imported only to upgrade or compare: a store at this code's
revision is recognised by :func:`up_to_date` from the version table and the
migration files alone, because importing Alembic (and Mako with it) costs
more than the rest of opening a store, and every ``ferryman tick`` from cron
opens one.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ferryman.errors import SchemaMismatch, StoreUnavailable
from ferryman.store import schema

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "ferryman_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every ferryman process; serialises concurrent upgrades on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6665_7272_796D_616E  # "ferryman"
# MariaDB's named locks are the server's, not a database's: the name carries the
# database, so that stores in two databases of one server upgrade independently.
_MARIADB_LOCK = sa.func.concat("ferryman.schema.", sa.func.database())
# How long an upgrade waits for another process's. PostgreSQL waits without end;
# GET_LOCK needs a bound (a holder that died has released the lock already).
MARIADB_LOCK_TIMEOUT_S = 600


def _config(connection: sa.Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@dataclass(frozen=True, slots=True)
class Revisions:
    current: tuple[str, ...]  # what the database is at; () for a database without ferryman
    head: str  # what this code expects
    known: frozenset[str]  # every revision this code has a migration for

    @property
    def up_to_date(self) -> bool:
        return self.current == (self.head,)

    @property
    def newer_than_code(self) -> bool:
        return any(rev not in self.known for rev in self.current)


# ``revision = "0007"`` and ``down_revision = "0006"`` in a migration file.
_REVISION_LINE = re.compile(r'^(down_)?revision\b[^=\n]*=\s*"([^"]+)"\s*$', re.MULTILINE)


@functools.cache
def code_head() -> str | None:
    """The newest migration's revision, read from the files of ``migrations/versions``.

    None when the files do not name one head (a merge revision, whose
    ``down_revision`` is a tuple): then :func:`up_to_date` leaves the question
    to Alembic. ``tests/unit/test_startup.py`` checks it against Alembic's head.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("[0-9]*.py"):
        for down, value in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            (parents if down else revisions).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def up_to_date(connection: sa.Connection) -> bool:
    """Whether the database is at this code's revision, asked without Alembic.

    False means "ask Alembic" (:func:`revisions`, :func:`check`): the version
    table may be missing, older, newer, or the head unknown.
    """
    head = code_head()
    if head is None or not sa.inspect(connection).has_table(VERSION_TABLE):
        return False
    version = sa.table(VERSION_TABLE, sa.column("version_num"))
    current = connection.execute(sa.select(version.c.version_num)).scalars().all()
    return list(current) == [head]


def revisions(connection: sa.Connection) -> Revisions:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    head = script.get_current_head()
    assert head is not None, "ferryman ships at least one migration"
    return Revisions(
        current=tuple(context.get_current_heads()),
        head=head,
        known=frozenset(rev.revision for rev in script.walk_revisions()),
    )


def check(connection: sa.Connection, where: str, *, auto_upgrade: bool) -> Revisions:
    """Make sure the schema is the one this code expects, upgrading if allowed.

    Must be called inside a write transaction: on SQLite that transaction holds
    the database's write lock, on PostgreSQL an advisory lock is taken, on
    MariaDB the caller holds :func:`upgrade_lock`, so processes starting at
    once do not migrate twice.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
    elif connection.dialect.name in schema.MARIADB and not _holds_upgrade_lock(connection):
        raise RuntimeError("on MariaDB the schema is checked inside upgrade_lock(connection)")
    found = revisions(connection)
    if found.up_to_date:
        return found
    if found.newer_than_code:
        raise SchemaMismatch(
            f"store {where} has schema revision {', '.join(found.current)}, newer than this "
            f"version of ferryman knows (its newest is {found.head}); upgrade ferryman"
        )
    if not auto_upgrade:
        state = (
            "has no ferryman tables"
            if not found.current
            else f"is at schema revision {', '.join(found.current)}"
        )
        raise SchemaMismatch(
            f"store {where} {state}; this version of ferryman needs revision {found.head}. "
            "Run `ferryman db upgrade` (or open the App with create=True)"
        )
    from alembic import command

    command.upgrade(_config(connection), "head")
    return revisions(connection)


def _holds_upgrade_lock(connection: sa.Connection) -> bool:
    holder, me = connection.execute(
        sa.select(sa.func.is_used_lock(_MARIADB_LOCK), sa.func.connection_id())
    ).one()
    return holder is not None and holder == me


@contextlib.contextmanager
def upgrade_lock(connection: sa.Connection, where: str) -> Iterator[None]:
    """Serialise schema checks and upgrades of one MariaDB database; elsewhere nothing.

    Enter it before the transaction that calls :func:`check` and leave it
    after that transaction ends: a named lock belongs to the session, not to
    a transaction, and the next process must find the upgrade committed when
    it gets the lock. The server releases it if the connection drops.
    """
    if connection.dialect.name not in schema.MARIADB:
        yield
        return
    got, holder = connection.execute(
        sa.select(
            sa.func.get_lock(_MARIADB_LOCK, MARIADB_LOCK_TIMEOUT_S),
            sa.func.is_used_lock(_MARIADB_LOCK),
        )
    ).one()
    connection.commit()  # the lock outlives it; the caller begins its own transaction
    if got != 1:
        raise StoreUnavailable(
            f"store {where}: another process (MariaDB connection {holder}) has been checking "
            f"or upgrading the schema for over {MARIADB_LOCK_TIMEOUT_S} s; it shows in the "
            "server's SHOW PROCESSLIST"
        )
    try:
        yield
    finally:
        if not connection.invalidated:
            connection.rollback()  # a transaction the block left open
            connection.execute(sa.select(sa.func.release_lock(_MARIADB_LOCK)))
            connection.commit()


def differences(connection: sa.Connection) -> list[Any]:
    """How the database's tables differ from :mod:`ferryman.store.schema`: [] if not at all.

    Alembic's comparison against the tables as this dialect creates them (a
    partial index, or what stands in for it on MariaDB); on MariaDB also the
    generated columns that stand in for unique partial indexes, and the
    prefix lengths of indexes on long text.
    """
    dialect = connection.dialect.name
    generated = {
        (key.table.name, name)
        for key in schema.MARIADB_UNIQUE_WHERE
        for name in (key.column, key.index.name)
    }

    def compared(item: Any, name: str | None, type_: str, reflected: bool, _other: Any) -> bool:
        if type_ == "index" and name in expressions:
            return False  # Alembic cannot compare an index on an expression: checked below
        if type_ == "foreign_key_constraint" and not reflected:
            return schema.created_on(item, dialect)
        if reflected and type_ in ("column", "index") and dialect in schema.MARIADB:
            return (item.table.name, name) not in generated
        return True

    expressions = {
        str(index.name)
        for table in schema.metadata.sorted_tables
        for index in table.indexes
        if any(not isinstance(e, sa.Column) for e in index.expressions)
    }

    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "include_object": compared}
    )
    found: list[Any] = list(compare_metadata(context, _as_created_on(dialect)))
    if dialect in schema.MARIADB:
        found.extend(_mariadb_differences(sa.inspect(connection)))
    found.extend(_missing_expression_indexes(sa.inspect(connection), dialect, expressions))
    return found


def _missing_expression_indexes(
    inspector: sa.Inspector, dialect: str, names: set[str]
) -> list[Any]:
    """The declared indexes on expressions this dialect has that the database lacks, by name."""
    found: list[Any] = []
    for table in schema.metadata.sorted_tables:
        wanted = [ix for ix in table.indexes if ix.name in names and schema.created_on(ix, dialect)]
        if wanted:
            present = {ix["name"] for ix in inspector.get_indexes(table.name)}
            found.extend(("add_index", ix) for ix in wanted if ix.name not in present)
    return found


def _as_created_on(dialect: str) -> sa.MetaData:
    """The declared tables with the indexes this dialect has, and only those.

    Alembic pairs indexes by name before it filters them, so the two
    declarations of one index (partial, and MariaDB's) must not both be there.
    """
    tables = sa.MetaData(naming_convention=schema.metadata.naming_convention)
    for table in schema.metadata.sorted_tables:
        copy = table.to_metadata(tables)
        for index in table.indexes:
            if not schema.created_on(index, dialect):
                copy.indexes -= {ix for ix in copy.indexes if _same_index(ix, index)}
    return tables


def _same_index(one: sa.Index, other: sa.Index) -> bool:
    names = [column.name for column in one.columns]
    return one.name == other.name and names == [column.name for column in other.columns]


def _mariadb_differences(inspector: sa.Inspector) -> list[Any]:
    found: list[Any] = []
    for key in schema.MARIADB_UNIQUE_WHERE:
        columns = {column["name"]: column for column in inspector.get_columns(key.table.name)}
        column = columns.get(key.column)
        computed = None if column is None else column.get("computed")
        if not (computed and computed.get("persisted")):
            found.append(("missing_generated_column", key.table.name, key.column))
        index = _reflected_index(inspector, key.table.name, str(key.index.name))
        if index is None or not index["unique"] or index["column_names"] != [key.column]:
            found.append(("missing_unique_index", key.table.name, key.index.name))
    for table in schema.metadata.sorted_tables:
        for declared in table.indexes:
            length = declared.dialect_options["mariadb"]["length"]
            reflected = _reflected_index(inspector, table.name, str(declared.name))
            if length and reflected is not None:
                options = reflected.get("dialect_options", {})
                if options.get("mariadb_length", options.get("mysql_length")) != length:
                    found.append(("modify_prefix_length", table.name, declared.name, length))
    return found


def _reflected_index(inspector: sa.Inspector, table: str, name: str) -> Any:
    return next((ix for ix in inspector.get_indexes(table) if ix["name"] == name), None)
