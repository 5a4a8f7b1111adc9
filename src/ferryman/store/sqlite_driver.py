"""SQLite statements run on the driver's cursor, inside SQLAlchemy's transaction.

A Core statement is compiled once to SQLite's SQL and executed on the cursor of
the connection the caller's transaction holds: still parameterised, without
SQLAlchemy's per-execution work (see :mod:`ferryman.store.sqlite`). A driver
error is raised as SQLAlchemy would raise it (:func:`ferryman.store.faults.driver_error`).
"""

from __future__ import annotations

import json
import sqlite3
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.sql.compiler import SQLCompiler

from ferryman.store import faults


class DriverStatement:
    """A Core statement compiled once for SQLite and run on the driver's cursor."""

    def __init__(self, statement: sa.ClauseElement) -> None:
        compiled = statement.compile(dialect=sqlite_dialect())
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.names = tuple(compiled.positiontup or ())
        self.defaults = dict(compiled.params)
        self._row: Any = None

    def _values(self, params: dict[str, Any]) -> list[Any]:
        values = {**self.defaults, **params}
        return [values[name] for name in self.names]

    def rows(self, conn: sa.Connection, params: dict[str, Any]) -> list[Any]:
        """Run it; its rows, whose columns read by name as well as by position."""
        cursor = _cursor(conn)
        try:
            rows = self._fetch(cursor, params)
            if not rows:
                return rows
            if self._row is None:
                names = [d[0] for d in cursor.description]
                self._row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            return [self._row._make(row) for row in rows]
        finally:
            cursor.close()

    def tuples(self, conn: sa.Connection, params: dict[str, Any]) -> list[Any]:
        """Run it; its rows as plain tuples (by the thousand, cheaper than named ones)."""
        cursor = _cursor(conn)
        try:
            return self._fetch(cursor, params)
        finally:
            cursor.close()

    def _fetch(self, cursor: Any, params: dict[str, Any]) -> list[Any]:
        return self._fetch_values(cursor, self._values(params))

    def first_of(self, conn: sa.Connection, values: Sequence[Any]) -> Any:
        """Run it with its values in parameter order; its first row as a tuple, or None.

        For a statement run once per call (a submit's insert): no parameter
        dict to merge, no named row to build.
        """
        cursor = _cursor(conn)
        try:
            rows = self._fetch_values(cursor, values)
        finally:
            cursor.close()
        return rows[0] if rows else None

    def _fetch_values(self, cursor: Any, values: Sequence[Any]) -> list[Any]:
        try:
            cursor.execute(self.sql, values)
            return cursor.fetchall()  # type: ignore[no-any-return]
        except sqlite3.Error as exc:
            raise faults.driver_error(self.sql, exc) from exc

    def changed(self, conn: sa.Connection, params: dict[str, Any]) -> int:
        """Run it (a write returning nothing); the number of rows it changed."""
        cursor = _cursor(conn)
        try:
            cursor.execute(self.sql, self._values(params))
            return cursor.rowcount  # type: ignore[no-any-return]
        except sqlite3.Error as exc:
            raise faults.driver_error(self.sql, exc) from exc
        finally:
            cursor.close()

    def first(self, conn: sa.Connection, params: dict[str, Any]) -> Any:
        """Run it; the first row it returns, if any."""
        rows = self.rows(conn, params)
        return rows[0] if rows else None

    def many(self, conn: sa.Connection, params: Sequence[dict[str, Any]]) -> None:
        self.many_rows(conn, [self._values(p) for p in params])

    def many_rows(self, conn: sa.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Run it once per row of values, given in the statement's parameter order."""
        cursor = _cursor(conn)
        try:
            cursor.executemany(self.sql, rows)
        except sqlite3.Error as exc:
            raise faults.driver_error(self.sql, exc) from exc
        finally:
            cursor.close()


def _cursor(conn: sa.Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def json_list_param(name: str) -> Any:
    """``SELECT value FROM json_each(:name)``: a list bound as one JSON parameter."""
    return sa.select(sa.func.json_each(sa.bindparam(name)).table_valued("value").c.value)


def json_list(values: Sequence[Any]) -> str:
    return json.dumps(list(values))
