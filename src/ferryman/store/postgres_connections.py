"""A PostgreSQL store's connections of their own: the one its submits are written
on (in autocommit), and the one each worker listens on for wake-ups."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from ferryman.model import Backoff
from ferryman.store import faults
from ferryman.store.dialect import CONNECT_TIMEOUT_S
from ferryman.supervise import supervised

log = logging.getLogger("ferryman.store")

CHANNEL = "ferryman_runs"  # the wake-ups' (payload: the job)


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


RECONNECT_BACKOFF = Backoff(base=0.2, factor=2.0, max=10.0)


class Listener:
    """A named background thread that calls ``on_job(job)`` for each notification."""

    def __init__(self, conninfo: str, on_job: Callable[[str], None], *, name: str) -> None:
        self._conninfo = conninfo
        self._on_job = on_job
        self._stop = threading.Event()
        # stop() writes a byte here to end the wait for notifications at once:
        # a stopping worker waits for this thread, and every worker stops once.
        self._wake_up, self._woken = socket.socketpair()
        # Restarted after a crash (of on_job, say): listening again is always safe.
        self._thread = supervised(
            name, self._run, restart=RECONNECT_BACKOFF, stop=self._stop, start=False
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; return once the thread and its connection are gone (or ``timeout``)."""
        self._stop.set()
        with contextlib.suppress(OSError):  # closed: stopped before
            self._wake_up.send(b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._wake_up.close()
            self._woken.close()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    self._listen(conn)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return  # stopped while waiting: a connection closed under us is no news
                failures += 1
                delay = RECONNECT_BACKOFF.delay(failures, self._thread.name)
                log.warning("wake-up listener lost its connection, polling meanwhile: %s", exc)
                self._stop.wait(delay)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        """Hand each notification to ``on_job`` until stopped; raises if the connection fails."""
        with selectors.DefaultSelector() as waiting:
            waiting.register(conn.fileno(), selectors.EVENT_READ)
            waiting.register(self._woken, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in waiting.select():
                    if key.fileobj is not self._woken:  # notifications, or the connection's end
                        for notification in conn.notifies(timeout=0):
                            self._on_job(notification.payload)
