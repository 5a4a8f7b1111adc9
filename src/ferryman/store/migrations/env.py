"""Alembic environment for the ferryman store.

ferryman runs its migrations itself (``ferryman db upgrade``, or on first use
of a SQLite store) and hands Alembic an open connection; there is no
``alembic.ini``. The version table has its own name so that an application
keeping its own Alembic history in the same database is not disturbed.
"""

from __future__ import annotations

from alembic import context

from ferryman.store.migrate import VERSION_TABLE
from ferryman.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
