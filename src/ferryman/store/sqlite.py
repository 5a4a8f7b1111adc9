"""SQLite statements for the hot paths: claim and complete.

A SQLite statement costs microseconds; SQLAlchemy's work around each
execution (parameters, events, result objects) costs many times that, and on
SQLite it is spent while holding the database's single write lock, which
every other worker process is waiting for. So the statements a worker runs
for every run are Core statements compiled once to SQLite's SQL and executed
on the driver's cursor, inside the caller's transaction: still parameterised,
with exactly the semantics of the portable code in :mod:`ferryman.store.runs`
(the contract tests run both stores). A driver error is raised as SQLAlchemy
would raise it (:func:`ferryman.store.faults.driver_error`), so it is
translated and classified like any other. Lists travel as one JSON parameter
(``json_each``), so a statement's text does not depend on a batch's size.
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

from ferryman.model import RunStatus
from ferryman.store import faults
from ferryman.store.dialect import database_now
from ferryman.store.schema import run_events, runs


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
            try:
                cursor.execute(self.sql, self._values(params))
                rows: list[Any] = cursor.fetchall()
            except sqlite3.Error as exc:
                raise faults.driver_error(self.sql, exc) from exc
            if not rows:
                return rows
            if self._row is None:
                names = [d[0] for d in cursor.description]
                self._row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
            return [self._row._make(row) for row in rows]
        finally:
            cursor.close()

    def first(self, conn: sa.Connection, params: dict[str, Any]) -> Any:
        """Run it; the first row it returns, if any."""
        rows = self.rows(conn, params)
        return rows[0] if rows else None

    def many(self, conn: sa.Connection, params: Sequence[dict[str, Any]]) -> None:
        cursor = _cursor(conn)
        try:
            cursor.executemany(self.sql, [self._values(p) for p in params])
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


NOW = DriverStatement(sa.select(database_now("sqlite")))

EXPIRED = DriverStatement(
    sa.select(runs.c.id, runs.c.attempt, runs.c.max_attempts, runs.c.lease_owner)
    .where(
        runs.c.status == RunStatus.RUNNING.value,
        runs.c.lease_expires_at < sa.bindparam("now"),
        runs.c.job.in_(json_list_param("jobs")),
    )
    .order_by(runs.c.lease_expires_at)
    .limit(sa.bindparam("limit"))
)

DUE = DriverStatement(
    sa.select(runs.c.id, runs.c.available_at)
    .where(
        runs.c.job == sa.bindparam("job"),
        runs.c.status == RunStatus.QUEUED.value,
        runs.c.available_at <= sa.bindparam("now"),
    )
    .order_by(runs.c.available_at, runs.c.id)
    .limit(sa.bindparam("limit"))
)

_fence = sa.and_(
    runs.c.id == sa.bindparam("run_id"),
    runs.c.lease_token == sa.bindparam("token"),
    runs.c.status == RunStatus.RUNNING.value,
)

SUCCEED = DriverStatement(
    runs.update()
    .where(_fence)
    .values(
        status=RunStatus.SUCCEEDED.value,
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
        finished_at=database_now("sqlite"),
        updated_at=database_now("sqlite"),
    )
    .returning(runs.c.finished_at)
)

# A retry (queued again, later), a rejection (failed) or a death (dead):
# the portable code sets available_at only for a retry, finished_at only for
# the other two; NULL here means "leave it".
END = DriverStatement(
    runs.update()
    .where(_fence)
    .values(
        status=sa.bindparam("status"),
        available_at=sa.func.coalesce(sa.bindparam("available_at"), runs.c.available_at),
        finished_at=sa.func.coalesce(sa.bindparam("finished_at"), runs.c.finished_at),
        last_error=sa.bindparam("error"),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=sa.bindparam("now"),
    )
    .returning(runs.c.id)
)

LOG_EVENT = DriverStatement(
    run_events.insert().values(
        {column.name: sa.bindparam(column.name) for column in run_events.c if column.name != "id"}
    )
)
