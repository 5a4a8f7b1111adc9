"""Group commit for SQLite: the store's write transactions in one process share commits.

SQLite admits one writer at a time and, with ``synchronous=FULL``, every
commit waits for the disk. A worker whose jobs write through
``ctx.transaction()`` would pay that wait once per run, one run after the
other, and a second worker process would only queue behind the first.

:class:`GroupCommit` lets the threads of one process that write to the store
at about the same time share one commit, as PostgreSQL does with its WAL:

* A writer takes its turn on the process's mutex. The first one opens a
  write transaction (``BEGIN IMMEDIATE``, after the writer lock file below);
  each later one joins it inside a ``SAVEPOINT``.
* A writer whose block raised rolls back to its savepoint: what it wrote is
  gone, what the others wrote stays.
* A writer that finished its block leaves the transaction open if another
  writer is already waiting for the mutex, and waits for the commit;
  otherwise it commits, for everyone in the transaction, and wakes them.
* So a writer's block returns only once what it wrote is durable, exactly as
  with a transaction of its own; if the shared commit fails, every writer in
  it gets the error and none of their writes is kept.

Nobody waits for a group to fill: a transaction stays open only while
another writer is queued, so a lone writer commits at once, and under load
the groups grow by themselves — the writers that arrive during one commit's
disk wait form the next.

Across processes, transactions queue on an exclusive ``flock`` of
``<store>-writer.lock`` instead of sleeping in SQLite's busy handler (1, 2,
5 ... 100 ms): the kernel hands the lock to the next process the moment the
last one lets go, or dies, so a killed process never leaves it held. A
paused one does keep it, so a writer waits for it at most the busy timeout
and then gives up with :class:`~ferryman.StoreUnavailable` (see
:class:`WriterLockFile`). Writers that do not go through the store (a user's
own engine) meet SQLite's busy timeout, as before.

The write lock is what every other process waits for, so the time it is held
is kept short: the process keeps one connection for its writes, and opens,
commits and marks savepoints on the driver directly (SQLAlchemy's
connection stays inside one transaction that never ends, from its point of
view), which costs a fraction of a checkout, a ``begin()`` and a ``commit()``
through the pool.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ferryman.errors import FerrymanError, StoreError, StoreUnavailable
from ferryman.store.shared_submits import Latch
from ferryman.supervise import supervised

SAVEPOINT = "ferryman_writer"


class WriterLockFile:
    """An exclusive ``flock`` next to the database, held by one process's open transaction.

    ``flock`` itself cannot give up, and a process paused (SIGSTOP, a frozen
    VM) inside its transaction keeps the lock for as long as it is paused. So
    when the lock is taken, a thread of this process waits for it in the
    kernel — the hand-over stays immediate — while the writer waits at most
    ``timeout`` seconds for that thread and then raises
    :class:`~ferryman.StoreUnavailable`; callers retry with backoff. The
    waiting thread is reused by the next try rather than doubled, and lets the
    lock go at once if it gets it after everyone gave up.
    """

    def __init__(self, database: Path, *, timeout: float) -> None:
        self.path = database.with_name(f"{database.name}-writer.lock")
        self.timeout = timeout
        self._fd: int | None = None
        self._pid = 0
        self._waiter: _LockWaiter | None = None

    def acquire(self) -> None:
        fd = self._descriptor()
        waiter = self._waiter
        # While an earlier try's thread is still blocked in flock, it alone may
        # take the lock: a second flock of the same open file would succeed the
        # moment that thread got it, and that thread would then let it go.
        if waiter is None or not waiter.resume():
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._waiter = None
                return
            except BlockingIOError:
                pass  # another process is writing: wait below, at most self.timeout
            waiter = self._waiter = _LockWaiter(fd, self.path)
        if not waiter.wait(self.timeout):
            raise StoreUnavailable(
                f"gave up after {self.timeout:g}s waiting for the write lock {self.path}: "
                "another process holds it inside a write transaction (paused or stuck?); "
                "SQLite cannot take it from a paused process (see docs/operations.md)"
            )
        self._waiter = None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (unlocking it), unless a waiting thread still uses it."""
        if self._fd is not None and self._pid == os.getpid() and self._waiter is None:
            os.close(self._fd)
            self._fd = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child must not share its parent's open file: a flock
            # belongs to the open file, so parent and child would hold it as one.
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
            self._waiter = None  # the parent's waiting thread did not come along
        return self._fd


class _LockWaiter:
    """A thread blocked in ``flock`` for a writer that may stop waiting for it."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path
        self._decided = threading.Lock()
        self._granted = threading.Event()
        self._abandoned = False
        self._finished = False  # it gave the lock back: nobody wanted it any more
        self.error: OSError | None = None
        # Never restarted: it waits in flock once, and a second wait would lock twice.
        supervised(f"ferryman-writer-lock-{path.name}", self._wait)

    def _wait(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self._decided:
            if self._abandoned and self.error is None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._finished = True
                return
            self._granted.set()

    def wait(self, timeout: float) -> bool:
        """True once this process holds the lock; False if ``timeout`` passed first."""
        self._granted.wait(timeout)
        with self._decided:
            if not self._granted.is_set():
                self._abandoned = True
                return False
        if self.error is not None:
            raise StoreError(f"cannot lock {self._path}: {self.error}") from self.error
        return True

    def resume(self) -> bool:
        """Wait for this thread again; False if it is gone and a new one is needed."""
        with self._decided:
            if self._finished or self._granted.is_set():
                return False
            self._abandoned = False
            return True


class _Group:
    """One open write transaction and the writers that joined it."""

    __slots__ = ("committed", "error", "members")

    def __init__(self) -> None:
        self.members = 0  # writers whose block finished and who wait for the commit
        self.committed = Latch()
        self.error: BaseException | None = None


class _Session:
    """This process's connection for the store's writes, kept between transactions."""

    def __init__(self, engine: sa.Engine) -> None:
        self.connection = engine.connect()
        driver = self.connection.connection.dbapi_connection
        assert isinstance(driver, sqlite3.Connection)
        self.driver: sqlite3.Connection = driver
        self._begun_for_sqlalchemy: bool = False

    def begin(self) -> None:
        if not self._begun_for_sqlalchemy:
            # SQLAlchemy's begin, once: its hook sends BEGIN IMMEDIATE, and from
            # then on the connection is inside a transaction as SQLAlchemy sees it.
            self.connection.begin()
            self._begun_for_sqlalchemy = True
        else:
            self.sql("BEGIN IMMEDIATE")

    def sql(self, statement: str) -> None:
        self.driver.execute(statement).close()

    @property
    def usable(self) -> bool:
        """Still inside the transaction, for SQLite and for SQLAlchemy alike."""
        return self.in_driver_transaction and self.connection.in_transaction()

    @property
    def in_driver_transaction(self) -> bool:
        """Still inside SQLite's transaction, whatever SQLAlchemy believes."""
        return self.driver.in_transaction and not self.connection.invalidated

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()  # rolls back whatever is open


class GroupCommit:
    """The write transactions of one SQLite store in this process (see the module)."""

    def __init__(
        self, engine: sa.Engine, database: Path, *, where: str, lock_timeout: float
    ) -> None:
        self._engine = engine
        self._where = where  # the store, for messages
        self.lock_file = WriterLockFile(database, timeout=lock_timeout)
        self._mutex = threading.Lock()
        self._queued = 0  # writers waiting for the mutex
        self._counting = threading.Lock()
        self._holder: int | None = None  # thread holding the mutex
        self._session: _Session | None = None
        self._group: _Group | None = None
        self._inherited: list[_Session] = []  # a parent's connection: never touched, never closed
        self.commits = 0  # for tests and benchmarks: commits, and the writers they carried
        self.committed_writers = 0
        _in_this_process.add(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction, shared with this process's concurrent writers.

        Returns once what the block wrote is committed; raises (and keeps
        nothing of the block) if the block raised or the shared commit failed.
        """
        self._take_turn()
        try:
            group = self._group or self._open()
            session = self._session
            assert session is not None
            # The first writer of a transaction rolls back all of it on failure;
            # the others only what they wrote since their savepoint.
            joined = group.members > 0
            if joined:
                self._driver_sql(session, f"SAVEPOINT {SAVEPOINT}", "marking a savepoint")
        except BaseException:
            self._end_turn()
            raise
        try:
            yield session.connection
            if not session.usable:
                raise self._ended_inside(session)
            if joined:
                self._driver_sql(session, f"RELEASE {SAVEPOINT}", "releasing a savepoint")
        except BaseException:
            self._withdraw(group, session, joined)
            self._end_turn()
            raise
        group.members += 1
        self._end_turn()
        group.committed.wait()
        if group.error is not None:
            raise StoreError(
                f"store {self._where}: the commit failed and nothing of this transaction "
                f"was kept: {_first_line(group.error)}"
            ) from group.error

    def close(self) -> None:
        """Commit what writers left waiting, then close this process's write connection."""
        with self._mutex:
            if self._group is not None:
                self._close(self._group, commit=self._group.members > 0)
            self._discard_session()
            self.lock_file.close()

    def _forget_parent(self) -> None:
        """In a forked child: nothing of the parent's turns, transaction or connection."""
        self._mutex = threading.Lock()
        self._counting = threading.Lock()
        self._queued = 0
        self._holder = None
        self._group = None
        if self._session is not None:
            self._inherited.append(self._session)  # the parent's: never touched, never closed
            self._session = None

    # -- turns ---------------------------------------------------------------

    def check_outside(self) -> None:
        """Raise if this thread is inside a write of the store: it would wait for itself."""
        if self._holder == threading.get_ident():
            raise FerrymanError(
                "a store write was started inside another store write of the same thread "
                "(ctx.checkpoint(), app.submit() or ctx.heartbeat() inside ctx.transaction()?); "
                "on SQLite it would wait for itself. Write through the transaction's "
                "connection, or after the block"
            )

    def _take_turn(self) -> None:
        self.check_outside()
        with self._counting:
            self._queued += 1
        try:
            self._mutex.acquire()
        finally:
            with self._counting:
                self._queued -= 1
        self._holder = threading.get_ident()

    def _end_turn(self) -> None:
        """Commit now unless another writer is queued to join; then pass the turn on."""
        try:
            group = self._group
            if group is not None:
                with self._counting:
                    queued = self._queued
                if not queued:
                    self._close(group, commit=group.members > 0 and group.error is None)
        finally:
            self._holder = None
            self._mutex.release()

    # -- the transaction -----------------------------------------------------

    def _open(self) -> _Group:
        session = self._session
        self.lock_file.acquire()  # raises without the lock: nothing to release
        try:
            if session is None:
                session = self._session = _Session(self._engine)
            self._driver_begin(session)
        except BaseException:
            self._discard_session()
            self.lock_file.release()
            raise
        group = self._group = _Group()
        return group

    def _withdraw(self, group: _Group, session: _Session, joined: bool) -> None:
        """Undo a failed writer's block, keeping the other writers' work if it can."""
        if joined and session.in_driver_transaction:
            try:
                session.sql(f"ROLLBACK TO {SAVEPOINT}")
                session.sql(f"RELEASE {SAVEPOINT}")
            except sqlite3.Error as exc:
                group.error = exc
                self._close(group, commit=False)
                return
            if not session.usable:
                # The block's refused commit or rollback ended the transaction
                # for SQLAlchemy only (store/blocks.py): SQLite's is intact, so
                # the writers waiting in it commit now, and the next writer
                # starts on a fresh connection.
                self._close(group, commit=group.members > 0 and group.error is None)
            return
        if joined:
            group.error = StoreError("the transaction was rolled back by a failed write")
        self._close(group, commit=False)

    def _close(self, group: _Group, *, commit: bool) -> None:
        self._group = None
        session = self._session
        try:
            if commit and session is not None:
                try:
                    session.driver.commit()
                    self.commits += 1
                    self.committed_writers += group.members
                except sqlite3.Error as exc:
                    group.error = exc
            if not commit or group.error is not None:
                self._rollback()
            elif session is not None and not session.connection.in_transaction():
                self._discard_session()  # committed on the driver; SQLAlchemy's view is gone
        finally:
            self.lock_file.release()
            group.committed.set()

    def _rollback(self) -> None:
        """End SQLite's transaction; keep the connection if SQLAlchemy's view is intact."""
        session = self._session
        if session is None:
            return
        try:
            session.driver.rollback()
        except sqlite3.Error:
            self._discard_session()
            return
        if session.connection.invalidated or not session.connection.in_transaction():
            self._discard_session()  # the block ended SQLAlchemy's transaction: start afresh

    def _discard_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the driver ----------------------------------------------------------

    def _driver_begin(self, session: _Session) -> None:
        try:
            session.begin()
        except sqlite3.Error as exc:
            raise self._error("opening a write transaction", exc) from exc

    def _driver_sql(self, session: _Session, statement: str, doing: str) -> None:
        try:
            session.sql(statement)
        except sqlite3.Error as exc:
            raise self._error(doing, exc) from exc

    def _ended_inside(self, session: _Session) -> StoreError:
        if not session.connection.in_transaction() or session.connection.invalidated:
            return StoreError(
                f"store {self._where}: the block committed or rolled back the store's "
                "connection itself; leave that to the store, which commits when the block ends"
            )
        return StoreError(
            f"store {self._where}: SQLite rolled the write transaction back after a failed "
            "write inside the block (a full disk?); nothing of it was kept"
        )

    def _error(self, doing: str, exc: Any) -> StoreError:
        return StoreError(f"store {self._where} failed while {doing}: {_first_line(exc)}")


_in_this_process: weakref.WeakSet[GroupCommit] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for group_commit in list(_in_this_process):
        group_commit._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)  # a driver error wrapped by SQLAlchemy
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
