"""Everything that differs between SQLite and PostgreSQL, in one place.

* The backend is chosen by the URL: ``sqlite:///path`` or ``postgresql://...``
  (psycopg 3 is always the driver).
* SQLite: WAL journal, ``synchronous=FULL`` (a commit survives power loss),
  foreign keys on, a busy timeout (30 s, or ``?busy_timeout=SECONDS`` in the
  URL) that bounds every wait for another process's write lock, and every
  write transaction opened with
  ``BEGIN IMMEDIATE`` so two writers never deadlock upgrading a read lock.
  The store's writes in one process share commits (``group_commit.py``).
  Reads use a second engine with plain ``BEGIN`` so they never wait for writers.
* The clock is the database's: leases taken by workers on several hosts are
  compared against one clock, not against each host's.
* Driver errors are translated here into errors that name the cause
  (:func:`translate`): a wrong setup, an outage, a full disk.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from ferryman.errors import ConfigurationError, StoreError, StoreUnavailable
from ferryman.store.group_commit import GroupCommit

SQLITE_BUSY_TIMEOUT_S = 30.0  # the default; ``?busy_timeout=SECONDS`` in the URL sets another
POSTGRES_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class Backend:
    """The engines and SQL fragments for one store database."""

    url: sa.URL
    engine: Engine  # writes (BEGIN IMMEDIATE on SQLite)
    read_engine: Engine  # reads that never block writers
    is_sqlite: bool
    now: sa.ColumnElement[float]
    # SQLite: the store's write transactions in this process share commits.
    group_commit: GroupCommit | None = None

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    def insert(self, table: sa.Table) -> Any:
        """An INSERT that supports ``on_conflict_do_nothing`` on this backend."""
        return sqlite_insert(table) if self.is_sqlite else postgresql_insert(table)

    def ping(self, timeout: float) -> bool:
        """True if the database answers ``SELECT 1`` within about ``timeout`` seconds.

        PostgreSQL is asked on a connection of its own, not the pool's: after
        an outage the pool holds connections to a server that is gone.
        """
        if self.is_sqlite:
            try:
                with self.read_engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1").close()
                return True
            except sa.exc.DBAPIError:
                return False
        import psycopg  # local: only PostgreSQL stores get here

        try:
            with psycopg.connect(
                self.url.set(drivername="postgresql").render_as_string(hide_password=False),
                connect_timeout=max(1, math.ceil(timeout)),
                options=f"-c statement_timeout={round(timeout * 1000)}",
                autocommit=True,
            ) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def dispose(self) -> None:
        if self.group_commit is not None:
            self.group_commit.close()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def safe_url(url: sa.URL) -> str:
    """The URL with any password hidden, fit for messages and logs."""
    return url.render_as_string(hide_password=True)


def parse_url(raw: str | sa.URL) -> sa.URL:
    """Parse and normalise a store URL, with a clear error when it is wrong."""
    if isinstance(raw, sa.URL):
        url = raw
    else:
        try:
            url = sa.make_url(raw)
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(
                f"invalid store URL {raw!r}: expected sqlite:///path/to/file.db "
                "or postgresql://user@host/dbname"
            ) from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.get_driver_name() not in ("pysqlite", ""):
            raise ConfigurationError(
                f"unsupported SQLite driver in {safe_url(url)}; use sqlite:///"
            )
        if not url.database or url.database == ":memory:":
            raise ConfigurationError(
                f"store URL {safe_url(url)} names no file; an in-memory SQLite database "
                "cannot be shared between connections, use sqlite:///path/to/file.db"
            )
        return url.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        if url.get_driver_name() not in ("psycopg", "", "postgres", "postgresql"):
            raise ConfigurationError(
                f"unsupported PostgreSQL driver {url.get_driver_name()!r} in "
                f"{safe_url(url)}; ferryman uses psycopg 3 (postgresql+psycopg://)"
            )
        return url.set(drivername="postgresql+psycopg")
    raise ConfigurationError(
        f"unsupported store URL {safe_url(url)}: ferryman stores state in SQLite "
        "(sqlite:///path/to/file.db) or PostgreSQL (postgresql://user@host/dbname)"
    )


def create_backend(raw_url: str | sa.URL, *, pool_size: int = 10) -> Backend:
    url = parse_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_backend(url, pool_size)
    return _postgres_backend(url, pool_size)


def sqlite_busy_timeout(url: sa.URL) -> tuple[sa.URL, float]:
    """The URL without ``busy_timeout``, and that timeout in seconds (30 by default).

    It bounds every wait for another process's write lock: in SQLite's busy
    handler and on the writer lock file (:mod:`ferryman.store.group_commit`).
    """
    raw = url.query.get("busy_timeout")
    if raw is None:
        return url, SQLITE_BUSY_TIMEOUT_S
    text = raw if isinstance(raw, str) else raw[-1]
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(
            f"store URL {safe_url(url)}: busy_timeout must be a positive number of seconds, "
            f"got {text!r}"
        )
    return url.difference_update_query(["busy_timeout"]), seconds


def _sqlite_backend(url: sa.URL, pool_size: int) -> Backend:
    url, busy_timeout = sqlite_busy_timeout(url)
    path = Path(url.database or "")
    if not path.parent.exists():
        raise ConfigurationError(
            f"store URL {safe_url(url)}: directory {str(path.parent)!r} does not exist"
        )

    def make(begin: str) -> Engine:
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _configure(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # Let SQLAlchemy's begin hook, not the sqlite3 module, open transactions.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.execute(f"PRAGMA busy_timeout={round(busy_timeout * 1000)}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # On the driver: a statement through SQLAlchemy would cost more
            # than the BEGIN itself, on every transaction.
            try:
                conn.connection.dbapi_connection.execute(begin).close()  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise sa.exc.OperationalError(begin, (), exc) from exc

        return engine

    engine = make("BEGIN IMMEDIATE")
    return Backend(
        url=url,
        engine=engine,
        read_engine=make("BEGIN"),
        is_sqlite=True,
        now=database_now("sqlite"),
        group_commit=GroupCommit(engine, path, where=safe_url(url), lock_timeout=busy_timeout),
    )


def _postgres_backend(url: sa.URL, pool_size: int) -> Backend:
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=2 * pool_size,
        connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S},
    )
    return Backend(
        url=url, engine=engine, read_engine=engine, is_sqlite=False, now=database_now("postgresql")
    )


def database_now(dialect: str) -> sa.ColumnElement[float]:
    """The database's clock in seconds since the epoch, the one every lease is measured by."""
    if dialect == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Double())
    return sa.literal_column("extract(epoch from clock_timestamp())::float8", sa.Double())


@contextlib.contextmanager
def translated_errors(backend: Backend, doing: str) -> Iterator[None]:
    """Turn driver exceptions raised while ``doing`` into ferryman's (see :func:`translate`)."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        raise translate(backend, doing, exc) from exc


def translate(
    backend: Backend, doing: str, exc: sa.exc.DBAPIError
) -> StoreError | ConfigurationError:
    """The error that names the cause: a wrong URL or setup, an outage, or the database's own.

    A wrong URL or server setup (no such database or role, a refused
    password) is a :class:`ConfigurationError`: no retry cures it. A server
    that cannot be reached, or a write lock held past the busy timeout, is
    :class:`StoreUnavailable`: it may come back.
    """
    orig = exc.orig
    detail = str(orig).strip().splitlines()[0] if orig is not None else str(exc)
    where = backend.safe_url
    if isinstance(orig, sqlite3.Error):
        known = _sqlite_failure(backend, doing, str(orig))
        if known is not None:
            return known
    elif orig is not None:
        refused = _postgres_refusal(orig)
        if refused is not None:
            return ConfigurationError(f"store {where}: {refused}")
    if exc.connection_invalidated or _is_connect_failure(exc):
        return StoreUnavailable(f"cannot reach store {where} while {doing}: {detail}")
    return StoreError(f"store {where} failed while {doing}: {detail}")


# Refusals at connect time that no retry cures. libpq reports them without a
# SQLSTATE, so the server's message is matched (servers whose lc_messages is
# not English are reported as unreachable, as before).
_POSTGRES_REFUSALS = (
    ('database "[^"]*" does not exist', "create it, or name another database in the store URL"),
    ('role "[^"]*" does not exist', "create the role, or name another user in the store URL"),
    ('password authentication failed for user "[^"]*"', "check the password in the store URL"),
    ("no pg_hba.conf entry for [^\n]*", "the server's pg_hba.conf does not admit this connection"),
    ("no password supplied", "put the password in the store URL or in ~/.pgpass"),
)
_POSTGRES_REFUSAL_SQLSTATES = ("3D000", "28000", "28P01")  # no database; role or password


def _postgres_refusal(orig: BaseException) -> str | None:
    text = str(orig)
    for pattern, advice in _POSTGRES_REFUSALS:
        found = re.search(pattern, text)
        if found is not None:
            return f"{found.group(0)} ({advice})"
    if getattr(orig, "sqlstate", None) in _POSTGRES_REFUSAL_SQLSTATES:
        return text.strip().splitlines()[0]
    return None


DISK_NEARLY_FULL = 1 << 20  # bytes: less than this free, and SQLite cannot grow its files


def _sqlite_failure(backend: Backend, doing: str, text: str) -> StoreError | None:
    where = backend.safe_url
    if "database is locked" in text:
        return StoreUnavailable(
            f"store {where}: another process held the database's write lock past the busy "
            f"timeout while {doing} (SQLite: {text})"
        )
    if "disk I/O error" in text or "database or disk is full" in text:
        directory = Path(backend.url.database or "").resolve().parent
        try:
            stats = os.statvfs(directory)
        except OSError:
            return None
        free = stats.f_bavail * stats.f_frsize
        if free < DISK_NEARLY_FULL:
            return StoreError(
                f"store {where}: the disk holding {directory} is full ({free:,} bytes free) "
                f"while {doing}; free space there and retry (SQLite: {text})"
            )
    return None


def _is_connect_failure(exc: sa.exc.DBAPIError) -> bool:
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "unable to open database file" in str(orig)
    import psycopg  # local: only needed when a PostgreSQL error is being classified

    if not isinstance(orig, psycopg.OperationalError):
        return False
    # No SQLSTATE: the client never got an answer. Class 08 is a connection
    # exception, 57P0x an administrator or crash shutdown of the server.
    sqlstate = orig.sqlstate
    return sqlstate is None or sqlstate.startswith("08") or sqlstate.startswith("57P")
