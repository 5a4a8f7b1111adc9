"""Schema revisions: check at start-up, upgrade on request (or on first use of SQLite)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from ferryman.errors import SchemaMismatch

VERSION_TABLE = "ferryman_alembic_version"
MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant shared by every ferryman process; serialises concurrent upgrades on PostgreSQL.
_PG_MIGRATION_LOCK = 0x6665_7272_796D_616E  # "ferryman"


def _config(connection: sa.Connection | None = None) -> Config:
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


def revisions(connection: sa.Connection) -> Revisions:
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
    the database's write lock, on PostgreSQL an advisory lock is taken, so
    processes starting at once do not migrate twice.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
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
    command.upgrade(_config(connection), "head")
    return revisions(connection)
