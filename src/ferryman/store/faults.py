"""Telling a failure of the store's database from a failure of the code that used it.

A job whose attempt failed because the store went away (PostgreSQL restarted,
the connection cut, SQLite's file locked past the busy timeout or its disk
full) did nothing wrong: the worker gives that attempt back instead of
counting it. So the question "did the store fail?" must have a precise
answer, and the answer cannot come from the type of an error alone: a
user's own ``IntegrityError`` on their table, an SQL typo (an
``OperationalError`` on SQLite) or an outage of another database the job
reads are all the job's failure.

Hence errors are **marked where they happen**:

* every error raised on a connection of the store's engines passes their
  ``handle_error`` hook (:func:`watch`), which marks it when the database
  failed — SQLAlchemy found the connection dead, or the driver's error code
  says the server shut down, the connection broke, or the disk or its lock
  failed (each backend's ``is_database_failure`` knows its driver's codes);
* the statements ferryman runs on the driver directly (the hot paths in
  the backend modules) wrap the driver's error the same way
  (:func:`driver_error`).

:func:`caused_by_store` then finds such a mark anywhere in an exception's
chain (``__cause__`` and ``__context__``), so a job that wraps the error in
its own still gets its attempt back. :class:`~ferryman.StoreUnavailable`
counts as marked, and so does a :class:`~ferryman.StoreError` whose direct
cause is a database failure or another ``StoreError``: the store's SQLite
commit, shared by the writers of a moment, raises those to every writer in
it when the commit failed or another writer's failure made SQLite roll the
whole transaction back — neither is the fault of a writer whose block ended
well.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ferryman.errors import StoreError, StoreUnavailable
from ferryman.store.dialect import is_database_failure

_MARK = "_ferryman_store_failed"


def mark(error: BaseException) -> None:
    setattr(error, _MARK, True)


def _on_error(context: sa.engine.ExceptionContext) -> None:
    if context.is_disconnect or is_database_failure(context.original_exception):
        mark(context.original_exception)
        if context.sqlalchemy_exception is not None:
            mark(context.sqlalchemy_exception)


def watch(*engines: sa.Engine) -> None:
    """Mark the database failures raised on the connections of ``engines``."""
    for engine in engines:
        if not event.contains(engine, "handle_error", _on_error):
            event.listen(engine, "handle_error", _on_error)


def driver_error(
    statement: str, error: Exception, driver_connection: Any = None
) -> sa.exc.DBAPIError:
    """A driver error from a statement ferryman ran on the driver, as SQLAlchemy raises it.

    Wrapped, it is translated to :class:`~ferryman.StoreError` like any other;
    marked when the database failed (or, on PostgreSQL, the connection broke).
    """
    broken = bool(getattr(driver_connection, "broken", False))
    # The driver's DB-API base class, by which SQLAlchemy picks the wrapper's class.
    base = next((c for c in type(error).__mro__ if c.__name__ == "Error"), Exception)
    wrapped = sa.exc.DBAPIError.instance(
        statement, None, error, base, connection_invalidated=broken
    )
    assert isinstance(wrapped, sa.exc.DBAPIError)  # a driver error is always a DBAPI one
    if broken or is_database_failure(error):
        mark(error)
        mark(wrapped)
    return wrapped


def caused_by_store(error: BaseException) -> bool:
    """Whether ``error`` or an exception in its chain is a failure of the store's database."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        link = pending.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        if getattr(link, _MARK, False) or isinstance(link, StoreUnavailable):
            return True
        cause = link.__cause__
        if isinstance(link, StoreError) and (
            isinstance(cause, StoreError) or (cause is not None and is_database_failure(cause))
        ):
            return True
        pending.extend(e for e in (cause, link.__context__) if e is not None)
    return False
