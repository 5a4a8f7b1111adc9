"""Column types and table options of the migrations, per database.

A migration that has run must keep meaning what it did: change a type in
``ferryman.store.schema`` with a new migration, never here. MariaDB needs
bounded types where a column is a key of an index, ``LONGTEXT`` for text of
any length (its ``TEXT`` stops at 64 KiB), and its tables' engine and
collation named (the server's defaults may be others).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

MARIADB = ("mariadb", "mysql")

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), *MARIADB)
Name = sa.Text().with_variant(sa.String(255), *MARIADB)
Status = sa.Text().with_variant(sa.String(32), *MARIADB)
Digest = sa.LargeBinary().with_variant(mysql.BINARY(32), *MARIADB)

MARIADB_TABLE: dict[str, Any] = {
    "mariadb_engine": "InnoDB",
    "mariadb_charset": "utf8mb4",
    "mariadb_collate": "utf8mb4_nopad_bin",
}


def on_mariadb() -> bool:
    return bool(op.get_bind().dialect.name in MARIADB)
