"""The connection a PostgreSQL store's submits are written on, in autocommit."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg

from ferryman.store import faults
from ferryman.store.dialect import CONNECT_TIMEOUT_S


class SubmitConnection:
    """The connection a process's submits are written on: one, in autocommit.

    Submits go out one statement at a time (:mod:`ferryman.store.shared_submits`),
    so one connection serves them all, without a pool's checkout and reset
    around each. Opened on first use; a connection that broke is dropped, and
    the next submit opens another.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self._cursor: psycopg.Cursor[Any] | None = None  # kept: one cursor serves every submit
        self.lock = threading.Lock()  # one statement at a time on it
        self.pid = os.getpid()

    def rows(self, statement: str, params: dict[str, Any]) -> list[tuple[int, bytes]]:
        """Run ``statement``, committed on return; errors raised as SQLAlchemy raises them."""
        conn, cursor = self._conn, self._cursor
        try:
            if conn is None or cursor is None:
                conn = self._conn = psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                cursor = self._cursor = conn.cursor()
            # Prepared on first use: PostgreSQL parses and plans each statement once.
            cursor.execute(statement, params, prepare=True)
            return [(row[0], bytes(row[1])) for row in cursor.fetchall()]
        except psycopg.Error as exc:
            if conn is not None and (conn.broken or conn.closed):
                self._conn = self._cursor = None
            raise faults.driver_error(statement, exc, conn) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = self._cursor = None
