"""Run keys compared in SQL by the index each store has of them.

A run is unique by its key's digest (:mod:`ferryman.store.keys`), but the SQL
table sensor's anti-join and the run search compare the keys themselves, in
SQL, where SQLite cannot compute a digest. SQLite and MariaDB index the keys
(MariaDB their first characters); PostgreSQL indexes their first
``RUN_KEY_PREFIX`` characters in byte order (a B-tree entry cannot hold a key
of any length), which serves both a prefix search and, with the whole key
compared after, equality.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

# The characters of a run key that the PostgreSQL and MariaDB indexes hold.
RUN_KEY_PREFIX = 255


def run_key_start(key: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """The first ``RUN_KEY_PREFIX`` characters of ``key`` in byte order
    (PostgreSQL), as ``ix_ferryman_runs_run_key_prefix`` holds them."""
    return sa.func.left(key, sa.literal_column(str(RUN_KEY_PREFIX))).collate("C")


class SameRunKey(sa.sql.functions.FunctionElement[bool]):
    """``SameRunKey(key, other)``: the run keys are equal, found by the store's
    index of run keys: on PostgreSQL, whose index holds the keys' first
    characters, by those first and then by the whole key."""

    type = sa.Boolean()
    name = "same_run_key"
    inherit_cache = True
    # A comparison already: where booleans are not native (SQLite, MariaDB), a
    # boolean function would otherwise be compared with 1 ("run_key = ? = 1"),
    # which no index serves (every run read: 0.2 to 1 s at a million runs).
    _is_implicitly_boolean = True


@compiles(SameRunKey)
def _same_run_key(element: SameRunKey, compiler: SQLCompiler, **kw: Any) -> str:
    key, other = element.clauses
    return compiler.process(key == other, **kw)


@compiles(SameRunKey, "postgresql")
def _same_run_key_postgresql(element: SameRunKey, compiler: SQLCompiler, **kw: Any) -> str:
    key, other = element.clauses
    both = sa.and_(run_key_start(key) == run_key_start(other), key == other)
    return compiler.process(both, **kw)
