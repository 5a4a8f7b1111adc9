"""The store database behind a URL: what every backend shares, and the registry of backends.

One class per database holds what truly differs — its engines and their
setup, its clock, how it claims, enqueues and finishes runs, its wake-ups,
its locking and the driver errors it translates:

* :class:`~ferryman.store.sqlite.SQLiteBackend` (``sqlite:///path``),
* :class:`~ferryman.store.postgres.PostgresBackend` (``postgresql://...``),
* :class:`~ferryman.store.mariadb.MariaDBBackend` (``mariadb://...``).

:class:`Backend` is the small base they share: the portable (SQLAlchemy
Core) form of each operation, which a backend replaces where its database
has a faster or a different way. The backend is chosen by the URL's scheme
(:func:`create_backend`). The clock is always the database's: leases taken
by workers on several hosts are compared against one clock, not against
each host's. Driver errors are translated into errors that name the cause
(:func:`translate`): a wrong setup, an outage, a full disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ferryman.errors import ConfigurationError, StoreError, StoreUnavailable
from ferryman.model import Backoff, RunEventKind, RunStatus
from ferryman.store.run_rows import (
    CLAIMED_COLUMNS,
    Lease,
    NewRun,
    Outcome,
    OutcomeKind,
    end_values,
    event,
    fenced_update,
    lease_update,
    outcome_event,
    status_is,
)
from ferryman.store.schema import run_events, runs

CONNECT_TIMEOUT_S = 10  # for servers reached over the network


class Listener(Protocol):
    """A background thread that wakes idle workers when their jobs get runs."""

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...


def bindable(row: Mapping[str, Any]) -> bool:
    """Whether every value of ``row`` can be a bound parameter (none is SQL, like the clock)."""
    return not any(isinstance(value, sa.ClauseElement) for value in row.values())


# A statement ready to run (Backend.prepared): its rows, read by name and position.
Prepared = Callable[[sa.Connection, dict[str, Any]], Sequence[Any]]


class ProcessConnection(Protocol):
    """A connection a store keeps outside its engine, for the process that opened it."""

    pid: int  # the process that opened it

    def close(self) -> None: ...


Connection = TypeVar("Connection", bound=ProcessConnection)


class Backend:
    """The engines, clock and SQL of one store database (see the module)."""

    name: ClassVar[str]  # "sqlite", "postgres", "mariadb": as the tests and benches call it
    url_names: ClassVar[tuple[str, ...]]  # the URL schemes (SQLAlchemy backend names) it takes
    example_url: ClassVar[str]
    # Whether opening a store applies its migrations unless told otherwise:
    # yes for the embedded default, no where schema changes are an operator's call.
    creates_schema: ClassVar[bool] = False
    # Whether run and event ids are allocated in commit order (one writer at a
    # time); otherwise a reader following ids must let recent ones settle.
    ids_in_commit_order: ClassVar[bool] = False
    # Whether the clock, read in a statement, is read after the statement's
    # snapshot and after the rows it locks are locked, so that a statement can
    # read it instead of a round trip of its own (ferryman.store.limits).
    clock_follows_locks: ClassVar[bool] = False
    now: ClassVar[sa.ColumnElement[float]]  # the database's clock, seconds since the epoch

    def __init__(self, url: sa.URL, engine: Engine, read_engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine  # writes
        self.read_engine = read_engine or engine  # reads that never block writers
        # Connections kept outside the engines, by name (process_connection).
        self._process_connections: dict[str, ProcessConnection] = {}
        # Built once: SQLAlchemy memoises a statement object's cache key, so the
        # hot paths skip building and keying a statement per call.
        self._now_query = sa.select(self.now)
        self._expired_query = (
            sa.select(runs.c.id, runs.c.attempt, runs.c.max_attempts, runs.c.lease_owner)
            .where(
                status_is(RunStatus.RUNNING),
                runs.c.lease_expires_at < sa.bindparam("now"),
                runs.c.job.in_(sa.bindparam("jobs", expanding=True)),
            )
            .order_by(runs.c.lease_expires_at)
            .limit(sa.bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        self._lease_runs = lease_update(sa.bindparam("ids", expanding=True)).returning(
            *CLAIMED_COLUMNS
        )
        self._lock_queued = (
            sa.select(runs.c.id)
            .where(runs.c.id.in_(sa.bindparam("ids", expanding=True)), runs.c.status == "queued")
            .with_for_update(skip_locked=True)
        )

    # -- opening -------------------------------------------------------------

    @classmethod
    def normalise(cls, url: sa.URL) -> sa.URL:
        """The URL with the driver ferryman uses, or :class:`ConfigurationError`."""
        raise NotImplementedError

    @classmethod
    def open(cls, url: sa.URL, *, pool_size: int) -> Backend:
        """Engines on the (normalised) ``url``."""
        raise NotImplementedError

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    def ping(self, timeout: float) -> bool:
        """True if the database answers ``SELECT 1`` within about ``timeout`` seconds."""
        try:
            with self.read_engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1").close()
            return True
        except sa.exc.DBAPIError:
            return False

    def process_connection(self, name: str, open_one: Callable[[], Connection]) -> Connection:
        """This process's connection ``name``, opened by ``open_one`` on first use.

        A forked child opens its own: its parent's is the parent's, never used
        or closed here. :meth:`dispose` closes them.
        """
        connection = self._process_connections.get(name)
        if connection is None or connection.pid != os.getpid():
            connection = self._process_connections[name] = open_one()
        return connection  # type: ignore[return-value]  # open_one made it

    def dispose(self) -> None:
        held, self._process_connections = self._process_connections, {}
        for connection in held.values():
            if connection.pid == os.getpid():
                connection.close()
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections without closing them."""
        self.engine.dispose(close=False)
        if self.read_engine is not self.engine:
            self.read_engine.dispose(close=False)

    # -- transactions --------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """A write transaction; it has committed when the block returns."""
        return self.engine.begin()

    @property
    def shares_transactions(self) -> bool:
        """Whether :meth:`transaction` may hand several writers one transaction."""
        return False

    @contextlib.contextmanager
    def schema_transaction(self, doing: str) -> Iterator[sa.Connection]:
        """The write transaction in which the schema is checked and upgraded."""
        with translated_errors(self, doing), self.engine.begin() as conn:
            yield conn

    # -- rows ----------------------------------------------------------------

    def prepared(self, statement: sa.Executable) -> Prepared:
        """``statement``, to be run many times: its rows for the parameters given."""

        def rows(conn: sa.Connection, params: dict[str, Any]) -> Sequence[Any]:
            result = conn.execute(statement, params)
            return result.all() if result.returns_rows else []  # an UPDATE: none

        return rows

    def clock(self, conn: sa.Connection) -> float:
        """The database's time now, in seconds since the epoch."""
        return float(conn.execute(self._now_query).scalar_one())

    def insert_absent(
        self,
        conn: sa.Connection,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        *,
        unique: Sequence[str | sa.Column[Any]],
        where: sa.ColumnElement[bool] | sa.TextClause | None = None,
        returning: sa.ColumnElement[Any] | None = None,
    ) -> list[Any]:
        """Insert the rows that no row holds yet by the unique index on ``unique``.

        ``unique``: the index's columns; ``where``: its predicate, when it is partial. Returns the
        ``returning`` value of each row inserted. A concurrent insert of the
        same key waits for the other transaction, then skips the row.
        """
        raise NotImplementedError

    def update_returning(
        self, conn: sa.Connection, update: sa.Update, *columns: sa.ColumnElement[Any]
    ) -> list[Any]:
        """Run ``update``; the ``columns`` of each row it changed, as written."""
        return list(conn.execute(update.returning(*columns)))

    def log_events(self, conn: sa.Connection, events: Sequence[dict[str, Any]]) -> None:
        """Append processing-log rows in the caller's transaction."""
        if events:
            conn.execute(run_events.insert(), list(events))

    # -- runs: the hot paths -------------------------------------------------

    def enqueue(
        self, conn: sa.Connection, new_runs: Sequence[NewRun], now: float | None
    ) -> list[tuple[int, bytes]]:
        """Insert the runs whose key is new, in the order given (no log row: see
        :meth:`~ferryman.store.queue.RunQueue.get_events`).

        ``now``: the database's clock, or None to read it (in the insert itself,
        where the backend can). Returns ``(id, key digest)`` of the runs created.
        """
        raise NotImplementedError

    def refuse_oversized(self, conn: sa.Connection, text: str, what: str) -> None:
        """Raise :class:`~ferryman.PayloadError` if ``text`` cannot go to the database
        in one statement (MariaDB's max_allowed_packet); nothing is sent then."""

    # Whether enqueue_committed is implemented.
    enqueues_committed = False

    def check_submitter(self) -> None:
        """Raise if this thread may not wait for a submit written by another thread."""

    def enqueue_committed(self, new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        """As :meth:`enqueue`, in a transaction of its own, committed when this returns.

        For backends that can do it in one statement (clock, runs and
        wake-ups in one round trip; see :attr:`enqueues_committed`).
        Runs without a concurrency key only.
        """
        raise NotImplementedError

    def expired_leases(
        self, conn: sa.Connection, *, now: float, jobs: Sequence[str], limit: int
    ) -> Sequence[Any]:
        """Running runs of ``jobs`` whose lease ran out, oldest expiry first, locked."""
        return conn.execute(
            self._expired_query, {"now": now, "jobs": list(jobs), "limit": limit}
        ).all()

    def claim(self, conn: sa.Connection, request: ClaimRequest) -> list[Any]:
        """Lease ``request.reclaim`` and up to ``request.room`` due runs; log ``claimed``.

        Returns the claimed rows (:data:`~ferryman.store.run_rows.CLAIMED_COLUMNS`):
        the reclaimed runs in the order given, then the due ones oldest first.
        """
        raise NotImplementedError

    # Whether claim_committed and succeed_committed can answer (not None).
    commits_alone = False

    def claim_committed(
        self, *, worker_id: str, jobs: Sequence[str], limit: int, lease_seconds: float
    ) -> tuple[list[Any], float] | None:
        """The plain claim of up to ``limit`` due runs as one statement that commits on its own.

        Where the backend has one: the claimed rows (as :meth:`claim`'s) and
        the database's clock they were claimed at. None: not here, or not now
        (a lease of ``jobs`` expired, or one of them is limited), so the
        caller claims in a transaction.
        """
        return None

    def succeed_committed(self, leases: Sequence[Lease], *, worker_id: str) -> set[Lease] | None:
        """Successes (fenced, logged) as one statement that commits on its own: the leases
        accepted. None: the backend has no such statement."""
        return None

    def lease(
        self, conn: sa.Connection, run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        """Lease the given runs to the request's worker and log it (with ``request.events``).

        Returns their rows, in the order of ``run_ids``.
        """
        if not run_ids:
            self.log_events(conn, request.events)
            return []
        params = {
            "owner": request.worker_id,
            "expires_at": request.expires_at,
            "at": request.now,
            "ids": list(run_ids),
        }
        rows = list(conn.execute(self._lease_runs, params))
        return self._logged_claims(conn, rows, run_ids, request)

    def lease_queued(
        self, conn: sa.Connection, run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        """Lease those of ``run_ids`` still queued, skipping rows another transaction holds.

        Returns their rows in the order of ``run_ids``; the claims are logged.
        """
        if not run_ids:
            return []
        # Locked by primary key: a locking read that scanned would lock every
        # row it passed on MariaDB.
        locked = set(conn.execute(self._lock_queued, {"ids": list(run_ids)}).scalars())
        return self.lease(conn, [run_id for run_id in run_ids if run_id in locked], request)

    def _logged_claims(
        self, conn: sa.Connection, rows: list[Any], run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        order = {run_id: position for position, run_id in enumerate(run_ids)}
        rows.sort(key=lambda row: order[row.id])
        self.log_events(conn, [*request.events, *(request.claimed_event(row) for row in rows)])
        return rows

    def lease_due(
        self, conn: sa.Connection, due: sa.Select[Any], params: dict[str, Any], worker_id: str
    ) -> LeasedDue | None:
        """A limited claim's pick and lease in one statement, where the backend has one.

        See :func:`ferryman.store.postgres_leases.lease_due_statement` for what
        it does with ``due`` and ``params``; None: the backend has no such
        statement, and the claim picks (:mod:`ferryman.store.limits`), then
        leases (:meth:`lease_queued`).
        """
        return None

    def succeed_within(
        self, conn: sa.Connection, lease: Lease, *, attempt: int, worker_id: str
    ) -> bool:
        """Write the run's success in the caller's transaction; False if the lease was lost."""
        now = self.clock(conn)
        success = Outcome(kind=OutcomeKind.SUCCEEDED, lease=lease, attempt=attempt)
        if not self.end(conn, success, now):
            return False
        self.log_events(conn, [outcome_event(success, now, worker_id)])
        return True

    def finish(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], *, worker_id: str, now: float
    ) -> tuple[set[Lease], set[Lease]]:
        """Write each outcome fenced by its lease: the leases accepted, and those logged."""
        accepted: set[Lease] = set()
        for outcome in outcomes:
            if self.end(conn, outcome, now):
                accepted.add(outcome.lease)
        return accepted, set()

    def end(self, conn: sa.Connection, outcome: Outcome, now: float) -> bool:
        """One outcome, fenced by its lease (not logged); False if the lease was lost."""
        values = end_values(outcome, now)
        changes: dict[str, Any] = {"status": values["status"], "last_error": values["error"]}
        for column in ("available_at", "finished_at"):
            if values[column] is not None:
                changes[column] = values[column]
        changes.update(lease_owner=None, lease_expires_at=None, updated_at=now)
        update = fenced_update([outcome.lease]).values(**changes)
        return conn.execute(update).rowcount == 1

    # -- wake-ups ------------------------------------------------------------

    def wake(self, conn: sa.Connection, jobs: Iterable[str]) -> None:
        """Tell idle workers of ``jobs``, once ``conn``'s transaction commits, that runs are due."""

    def listener(self, on_job: Callable[[str], None], *, name: str) -> Listener | None:
        """A thread calling ``on_job(job)`` on each wake-up; None where workers poll."""
        return None

    # -- errors --------------------------------------------------------------

    def refusal(self, orig: BaseException) -> str | None:
        """What a refused connection says is wrong with the setup (no retry cures it)."""
        return None

    def failure(self, doing: str, orig: BaseException) -> StoreError | None:
        """An error of this database that means more than its message, if ``orig`` is one."""
        return None

    def unreachable(self, orig: BaseException | None) -> bool:
        """Whether the driver error says the server could not be reached or went away."""
        return False

    def contended(self, orig: BaseException) -> bool:
        """Whether the driver error says the transaction lost a race for locks (a
        deadlock's victim, a lock wait past the server's timeout) and was rolled back."""
        return False

    @staticmethod
    def is_database_failure(error: BaseException) -> bool:
        """Whether a driver error says the database failed, rather than the statement."""
        return False


@dataclass(frozen=True, slots=True)
class LeasedDue:
    """What :meth:`Backend.lease_due` did: the runs leased, at ``at``, of those it scanned."""

    rows: list[Any]  # the runs leased, in claim order (CLAIMED_COLUMNS first)
    at: float  # the claim's time, read once the due runs were counted
    scanned: int  # due runs read
    picked: int  # of those, runs within their key's limit, up to the room


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRequest:
    """One claim: who, for which jobs, how many, and the runs taken back from expired leases."""

    worker_id: str
    jobs: Sequence[str]
    room: int  # due runs wanted besides the reclaimed ones
    reclaim: Sequence[int]
    now: float
    lease_seconds: float
    # Processing-log rows to write along with the claim's own (the expired leases).
    events: Sequence[dict[str, Any]] = ()

    @property
    def expires_at(self) -> float:
        return self.now + self.lease_seconds

    def claimed_event(self, row: Any) -> dict[str, Any]:
        return event(
            row.id, RunEventKind.CLAIMED, self.now, row.attempt, self.worker_id, row.lease_token
        )


# -- the registry ------------------------------------------------------------


def _backends() -> Iterator[type[Backend]]:
    # Imported here, one at a time: each backend module imports this one for
    # its base, and a SQLite store need not load PostgreSQL's driver (psycopg
    # and SQLAlchemy's dialect take longer to import than the rest of a tick).
    from ferryman.store.sqlite import SQLiteBackend

    yield SQLiteBackend
    from ferryman.store.postgres import PostgresBackend

    yield PostgresBackend
    from ferryman.store.mariadb import MariaDBBackend

    yield MariaDBBackend


def backend_class(url: sa.URL) -> type[Backend]:
    """The backend for ``url``'s scheme, or :class:`ConfigurationError` naming those there are."""
    for backend in _backends():
        if url.get_backend_name() in backend.url_names:
            return backend
    examples = ", ".join(f"{b.example_url}" for b in _backends())
    raise ConfigurationError(
        f"unsupported store URL {safe_url(url)}: ferryman stores state in SQLite, "
        f"PostgreSQL or MariaDB ({examples})"
    )


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
            examples = " or ".join(b.example_url for b in _backends())
            raise ConfigurationError(f"invalid store URL {raw!r}: expected {examples}") from exc
    return backend_class(url).normalise(url)


def create_backend(raw_url: str | sa.URL, *, pool_size: int = 10) -> Backend:
    url = parse_url(raw_url)
    return backend_class(url).open(url, pool_size=pool_size)


def database_now(dialect: str) -> sa.ColumnElement[float]:
    """The clock of the store database on SQLAlchemy dialect ``dialect``."""
    for backend in _backends():
        if dialect in backend.url_names:
            return backend.now
    raise ConfigurationError(f"no ferryman store runs on {dialect!r}")


def is_database_failure(error: BaseException) -> bool:
    """Whether a driver error of any backend says the database failed."""
    return any(backend.is_database_failure(error) for backend in _backends())


T = TypeVar("T")
CONTENDED_TRIES = 5  # tries of a write that keeps losing races for locks
CONTENDED_BACKOFF = Backoff(base=0.02, factor=2.0, max=0.5, jitter=0.5)


def again_when_contended(backend: Backend, write: Callable[[], T]) -> T:
    """``write()``, tried again while it fails for losing a race for locks.

    The database rolled such a transaction back whole (:meth:`Backend.contended`:
    a deadlock's victim, a lock wait past the server's timeout), so a write that
    is idempotent, as a submit is (runs are unique by key), does on the next
    try what the first would have. Concurrent producers of overlapping keys
    meet this on MariaDB, whose inserts lock an existing key's index entry
    shared before taking it for themselves. Up to :data:`CONTENDED_TRIES`
    tries, a short jittered wait between.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return write()
        except StoreError as exc:
            orig = getattr(exc.__cause__, "orig", None)
            if tries >= CONTENDED_TRIES or orig is None or not backend.contended(orig):
                raise
        time.sleep(CONTENDED_BACKOFF.delay(tries, str(threading.get_ident())))


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
    that cannot be reached, or a lock held past the database's timeout, is
    :class:`StoreUnavailable`: it may come back.
    """
    orig = exc.orig
    detail = str(orig).strip().splitlines()[0] if orig is not None else str(exc)
    where = backend.safe_url
    if orig is not None:
        known = backend.failure(doing, orig)
        if known is not None:
            return known
        refused = backend.refusal(orig)
        if refused is not None:
            return ConfigurationError(f"store {where}: {refused}")
    if exc.connection_invalidated or backend.unreachable(orig):
        return StoreUnavailable(f"cannot reach store {where} while {doing}: {detail}")
    return StoreError(f"store {where} failed while {doing}: {detail}")
