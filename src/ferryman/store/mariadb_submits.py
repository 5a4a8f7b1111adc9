"""The MariaDB store's submits on a connection of their own, in autocommit: one
statement, one round trip, for the runs of one submit or of the submits other
threads of this process make at the same moment (:mod:`~ferryman.store.shared_submits`).

In a transaction of the pool's, a submit took six round trips (BEGIN, the
clock, a read of the keys that exist, the insert, COMMIT, and the pool's
reset) and SQLAlchemy compiled its multi-row insert anew each time: 274
submits a second against 2,105 bare single-row commits (measured). Here the
clock is the statement's own (``NOW(6)`` is the statement's start, read once
for every row), the rows go in in the order given, and ``RETURNING`` names
the runs created. There is no ``ON CONFLICT DO NOTHING``: a key that exists
fails the statement with 1062, which MariaDB undoes whole, and the caller
writes the runs in a transaction that skips the keys that exist.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ferryman.errors import PayloadError
from ferryman.store import faults
from ferryman.store.records import shown_key
from ferryman.store.run_rows import CHUNK, NewRun
from ferryman.store.schema import runs

_NOW = "CAST(UNIX_TIMESTAMP(NOW(6)) AS DOUBLE)"
_COLUMNS = (
    "job, run_key, key_digest, payload, status, attempt, max_attempts, available_at, "
    "lease_token, created_at, updated_at, priority, concurrency_key, concurrency_digest"
)
# A run's row: its values, with the times read from the statement's clock. A run
# with no not_before is due at the clock plus its delay (GREATEST is NULL if any
# argument is, and every clock reading is after 0).
_ROW = (
    f"(%s, %s, %s, %s, 'queued', 0, %s, GREATEST({_NOW} + %s, COALESCE(%s, 0)), 0, "
    f"{_NOW}, {_NOW}, %s, %s, %s)"
)


def insert_statement(count: int) -> str:
    """The insert of ``count`` new runs, returning ``(id, key digest)`` of each."""
    rows = ", ".join([_ROW] * count)
    return f"INSERT INTO {runs.name} ({_COLUMNS}) VALUES {rows} RETURNING id, key_digest"


def insert_params(new_runs: Sequence[NewRun]) -> list[Any]:
    params: list[Any] = []
    for new in new_runs:
        params += (
            new.job,
            new.run_key,
            new.key_digest,
            new.payload_json,
            new.max_attempts,
            new.delay,
            new.not_before,
            new.priority,
            new.concurrency_key,
            new.concurrency_digest,
        )
    return params


# What a run's row takes in an insert besides its texts: its other values, quoted.
ROW_BYTES = 512
# Characters PyMySQL writes with a backslash before them.
_ESCAPED = "\\'\"\n\r\x00\x1a"


def statement_bytes(text: str) -> int:
    """Bytes ``text`` takes in a statement PyMySQL writes: UTF-8, escapes included."""
    size = len(text) if text.isascii() else len(text.encode())
    return size + sum(map(text.count, _ESCAPED))


def too_big(what: str, size: int, limit: int) -> PayloadError:
    return PayloadError(
        f"{what} would take {size:,} bytes in its statement, over the {limit:,} the MariaDB "
        "server takes (max_allowed_packet): nothing was written; raise max_allowed_packet "
        "on the server, or keep the data elsewhere and pass where it is"
    )


def sized_chunks(new_runs: Sequence[NewRun], limit: int) -> list[Sequence[NewRun]]:
    """``new_runs`` in inserts of at most ``CHUNK`` runs and ``limit`` bytes each.

    A run that would not fit in one alone is refused (:class:`PayloadError`)
    before anything is sent: the server would cut the connection, which reads
    as an outage, and a sensor would retry it forever.
    """
    chunked: list[Sequence[NewRun]] = []
    chunk: list[NewRun] = []
    size = 0
    for new in new_runs:
        texts = (new.payload_json, new.run_key, new.concurrency_key or "")
        need = ROW_BYTES + sum(map(statement_bytes, texts))
        if need > limit:
            named = f"payload of job {new.job!r} run_key {shown_key(new.run_key)}"
            raise too_big(named, need, limit)
        if chunk and (len(chunk) == CHUNK or size + need > limit):
            chunked.append(chunk)
            chunk, size = [], 0
        chunk.append(new)
        size += need
    if chunk:
        chunked.append(chunk)
    return chunked


class SubmitConnection:
    """The connection a process's submits are written on: one, in autocommit.

    Submits go out one statement at a time, so one connection serves them
    all, without a pool's checkout and reset around each. Opened on first
    use; one that broke is dropped, and the next statement opens another.
    """

    def __init__(
        self, connect: Callable[[], Any], unreachable: Callable[[BaseException], bool]
    ) -> None:
        self._connect = connect  # a new driver connection, as the store's pool makes them
        self._unreachable = unreachable  # whether a driver error says the connection is gone
        self._conn: Any = None
        self.lock = threading.Lock()  # one statement at a time on it
        self.pid = os.getpid()

    def insert(self, new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        """Insert ``new_runs`` (all new keys), committed on return; errors raised as
        SQLAlchemy raises them (a key that exists: :class:`sqlalchemy.exc.IntegrityError`).

        A connection kept from an earlier submit that turns out gone (the
        server closed it while idle, after ``wait_timeout``; it restarted) is
        replaced, and the statement sent once more on a new one. That is safe even if the
        first one committed unanswered: its keys exist then, and the second
        fails on them, to be written as keys that exist.
        """
        statement = insert_statement(len(new_runs))
        params = insert_params(new_runs)
        while True:
            kept, conn = self._conn is not None, self._conn
            try:
                if conn is None:
                    conn = self._conn = self._connect()
                    conn.autocommit(True)
                with conn.cursor() as cursor:
                    cursor.execute(statement, params)
                    return [(row[0], bytes(row[1])) for row in cursor.fetchall()]
            except Exception as exc:
                import pymysql

                if not isinstance(exc, pymysql.Error):
                    raise
                lost = isinstance(exc, pymysql.err.InterfaceError) or self._unreachable(exc)
                if conn is not None and lost:
                    self._conn = None
                    with contextlib.suppress(pymysql.Error, OSError):
                        conn.close()
                    if kept:
                        continue
                # Anything else (a key that exists, a deadlock's victim: the store
                # tries it again) leaves the connection as it was, for the next one.
                raise faults.driver_error(statement, exc) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
