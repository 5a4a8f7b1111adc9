"""The SQLite store: a file, one writer at a time, statements run on the driver.

* ``sqlite:///path``. WAL journal, ``synchronous=FULL`` (a commit survives
  power loss), foreign keys on, a busy timeout (30 s, or
  ``?busy_timeout=SECONDS`` in the URL) that bounds every wait for another
  process's write lock, and every write transaction opened with ``BEGIN
  IMMEDIATE`` so two writers never deadlock upgrading a read lock. The
  store's writes in one process share commits (:mod:`ferryman.store.group_commit`).
  Reads use a second engine with plain ``BEGIN`` so they never wait for writers.
* The hot paths (claim and complete) run on the driver's cursor. A SQLite
  statement costs microseconds; SQLAlchemy's work around each execution
  (parameters, events, result objects) costs many times that, and on SQLite
  it is spent while holding the database's single write lock, which every
  other worker process is waiting for. So the statements a worker runs for
  every run are Core statements compiled once to SQLite's SQL and executed on
  the driver's cursor, inside the caller's transaction: still parameterised,
  with exactly the semantics of the portable code in
  :class:`~ferryman.store.dialect.Backend` (the contract tests run every
  store). A driver error is raised as SQLAlchemy would raise it
  (:func:`ferryman.store.faults.driver_error`), so it is translated and
  classified like any other. Lists travel as one JSON parameter
  (``json_each``), so a statement's text does not depend on a batch's size.
* No wake-ups: one process's workers share the file, and poll it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from ferryman.errors import ConfigurationError, StoreError, StoreUnavailable
from ferryman.model import RunEventKind, RunStatus
from ferryman.store.dialect import (
    Backend,
    ClaimRequest,
    Prepared,
    bindable,
    safe_url,
    translated_errors,
)
from ferryman.store.group_commit import GroupCommit
from ferryman.store.run_rows import (
    CLAIMED_COLUMNS,
    QUEUED,
    RUN_ROW_COLUMNS,
    Lease,
    NewRun,
    Outcome,
    OutcomeKind,
    end_values,
    lease_update,
    run_values,
)
from ferryman.store.run_rows import event as event_row
from ferryman.store.schema import run_events, runs
from ferryman.store.sqlite_batch import SELECT_BATCH, batch_params
from ferryman.store.sqlite_driver import DriverStatement, json_list, json_list_param

SQLITE_BUSY_TIMEOUT_S = 30.0  # the default; ``?busy_timeout=SECONDS`` in the URL sets another
_CLOCK_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
CLOCK: sa.ColumnElement[float] = sa.literal_column(_CLOCK_SQL, sa.Double())
DISK_NEARLY_FULL = 1 << 20  # bytes: less than this free, and SQLite cannot grow its files


NOW = DriverStatement(sa.select(CLOCK))

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

# A run with a concurrency key is claimed by the limited path
# (ferryman.store.limits) alone, even in a job claimed here.
DUE = DriverStatement(
    sa.select(runs.c.id, runs.c.priority, runs.c.available_at)
    .where(
        runs.c.job == sa.bindparam("job"),
        runs.c.status == RunStatus.QUEUED.value,
        runs.c.available_at <= sa.bindparam("now"),
        runs.c.concurrency_digest.is_(None),
    )
    .order_by(runs.c.priority.desc(), runs.c.available_at, runs.c.id)
    .limit(sa.bindparam("limit"))
)

_fence = sa.and_(
    runs.c.id == sa.bindparam("run_id"),
    runs.c.lease_token == sa.bindparam("token"),
    runs.c.status == RunStatus.RUNNING.value,
)

_succeed = (
    runs.update()
    .where(_fence)
    .values(
        status=RunStatus.SUCCEEDED.value,
        lease_owner=None,
        lease_expires_at=None,
        last_error=None,
        finished_at=CLOCK,
        updated_at=CLOCK,
    )
)
SUCCEED = DriverStatement(_succeed.returning(runs.c.finished_at))
# The same without RETURNING: SQLite runs an UPDATE ... RETURNING as a write
# that may touch many rows, under a statement journal of its own, some 70,000
# instructions more per run on its way. The rows it changed say whether the
# fence held.
SUCCEED_FENCED = DriverStatement(_succeed)

LEASE = DriverStatement(lease_update(json_list_param("ids")).returning(*CLAIMED_COLUMNS))

# A retry (queued again, later), a rejection (failed) or a death (dead):
# the portable code sets available_at only for a retry, finished_at only for
# the other two; NULL here means "leave it". No RETURNING either (see SUCCEED_FENCED).
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
)

# Enqueue (SQLiteBackend.enqueue): the runs whose key is new, then, by id,
# those just created. Ids only grow within a write transaction, and it is the
# only writer.
_VALUES = f"VALUES ({', '.join(f':{name}' for name in RUN_ROW_COLUMNS)}) "
_INSERT_RUN = (
    f"INSERT INTO {runs.name} ({', '.join(RUN_ROW_COLUMNS)}) "
    f"{_VALUES}"
    "ON CONFLICT (key_digest) DO NOTHING"
)
ENQUEUE_ROW = DriverStatement(sa.text(_INSERT_RUN))
# The common submit, one run: the clock is read in the insert itself (SQLite
# reads 'now' once per statement, so the run's times agree), which spares a
# statement.
_CLOCKED = {
    "available_at": f"CASE WHEN :not_before IS NULL THEN {_CLOCK_SQL} + :delay "
    f"ELSE max({_CLOCK_SQL} + :delay, :not_before) END",
    "created_at": _CLOCK_SQL,
    "updated_at": _CLOCK_SQL,
}
_CLOCKED_VALUES = f"VALUES ({', '.join(_CLOCKED.get(n, f':{n}') for n in RUN_ROW_COLUMNS)}) "
ENQUEUE_ONE_ROW = DriverStatement(
    sa.text(f"{_INSERT_RUN.replace(_VALUES, _CLOCKED_VALUES)} RETURNING id")
)
assert ENQUEUE_ONE_ROW.names == (  # the order _clocked_values gives the values in
    *("job", "run_key", "key_digest", "payload", "status", "attempt", "max_attempts"),
    *("not_before", "delay", "delay", "not_before"),
    *("priority", "concurrency_key", "concurrency_digest", "lease_token"),
)
# A batch due at the clock: one statement, its runs one JSON parameter (sqlite_batch).
# Its runs are read back like ENQUEUE_ROW's: RETURNING cost SQLite more (measured).
ENQUEUE_BATCH = DriverStatement(sa.text(_INSERT_RUN.replace(_VALUES, SELECT_BATCH)))
# The same due at the clock read in the insert itself (once per statement, as
# ENQUEUE_ONE_ROW's), and the runs it created read back by the insert's own
# count and last id: one writer, so its new ids follow one another. Two
# statements where a clock, a last id, the insert and the read back took four:
# threads' submits merged into one statement go this way (shared_submits).
ENQUEUE_BATCH_CLOCKED = DriverStatement(
    sa.text(_INSERT_RUN.replace(_VALUES, SELECT_BATCH.replace(":now", _CLOCK_SQL)))
)
CREATED_BY_LAST_INSERT = DriverStatement(
    sa.select(runs.c.id, runs.c.key_digest)
    .where(
        sa.func.changes() > 0,
        runs.c.id.between(
            sa.func.last_insert_rowid() - sa.func.changes() + 1, sa.func.last_insert_rowid()
        ),
    )
    .order_by(runs.c.id)
)
assert ENQUEUE_ROW.names == RUN_ROW_COLUMNS  # the order run_values gives the values in
LAST_RUN_ID = DriverStatement(sa.select(sa.func.coalesce(sa.func.max(runs.c.id), 0)))
_created = runs.c.id > sa.bindparam("after")
CREATED_RUNS = DriverStatement(
    sa.select(runs.c.id, runs.c.key_digest).where(_created).order_by(runs.c.id)
)
LOG_EVENT = DriverStatement(
    run_events.insert().values(
        {column.name: sa.bindparam(column.name) for column in run_events.c if column.name != "id"}
    )
)


def in_claim_order(new_runs: Sequence[NewRun], now: float) -> Sequence[NewRun]:
    """``new_runs`` in the order claims take them: higher priority first, then due time.

    Their ids, and so their rows' places in the table, follow: a claim of a
    batch with mixed priorities then reads and rewrites its runs on a few
    pages next to each other, not on every page of the batch (with
    priorities 0, 1, 2 in turn, a claim's rows lay on 3.6 times the pages).
    The order among runs of equal priority and due time stays the caller's
    (stable sort), so the claims' FIFO order within a priority is unchanged.
    Their order of insertion matters to no lock: SQLite has one writer.
    """
    if all(new.priority == new_runs[0].priority for new in new_runs) and not any(
        new.delay or new.not_before is not None for new in new_runs
    ):
        return new_runs

    def claim_order(new: NewRun) -> tuple[int, float]:
        due = now + new.delay
        return -new.priority, due if new.not_before is None else max(due, new.not_before)

    return sorted(new_runs, key=claim_order)


class SQLiteBackend(Backend):
    """A store in a SQLite file (see the module)."""

    name = "sqlite"
    url_names = ("sqlite",)
    example_url = "sqlite:///path/to/file.db"
    creates_schema = True
    ids_in_commit_order = True  # one writer at a time
    now = CLOCK

    def __init__(
        self, url: sa.URL, engine: Engine, read_engine: Engine, group_commit: GroupCommit
    ) -> None:
        super().__init__(url, engine, read_engine)
        self.group_commit = group_commit

    @classmethod
    def normalise(cls, url: sa.URL) -> sa.URL:
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

    @classmethod
    def open(cls, url: sa.URL, *, pool_size: int) -> SQLiteBackend:
        url, busy_timeout = sqlite_busy_timeout(url)
        path = Path(url.database or "")
        if not path.parent.exists():
            raise ConfigurationError(
                f"store URL {safe_url(url)}: directory {str(path.parent)!r} does not exist"
            )
        engine = _engine(url, pool_size, busy_timeout, "BEGIN IMMEDIATE")
        return cls(
            url,
            engine,
            _engine(url, pool_size, busy_timeout, "BEGIN"),
            GroupCommit(engine, path, where=safe_url(url), lock_timeout=busy_timeout),
        )

    def dispose(self) -> None:
        self.group_commit.close()
        super().dispose()

    # -- transactions --------------------------------------------------------

    def transaction(self) -> contextlib.AbstractContextManager[sa.Connection]:
        return self.group_commit.transaction()

    @property
    def shares_transactions(self) -> bool:
        return True

    @contextlib.contextmanager
    def schema_transaction(self, doing: str) -> Iterator[sa.Connection]:
        """The schema's write transaction, with foreign keys off.

        A migration that must rebuild a table (SQLite cannot drop a
        constraint otherwise) drops the old one, and with foreign keys on that
        drop would delete every row referring to it (the processing log). The
        pragma only takes effect outside a transaction, hence on the driver
        before BEGIN; the references are checked before the commit instead.
        """
        with translated_errors(self, doing), self.engine.connect() as conn:
            driver: Any = conn.connection.dbapi_connection
            driver.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    yield conn
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise StoreError(
                            f"store {self.safe_url}: the schema upgrade left a row of "
                            f"{broken[0]} referring to a missing row of {broken[2]}; "
                            "nothing was changed"
                        )
            finally:
                driver.execute("PRAGMA foreign_keys=ON")

    # -- rows ----------------------------------------------------------------

    def clock(self, conn: sa.Connection) -> float:
        return float(NOW.first(conn, {})[0])

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
        insert = sqlite_insert(table).on_conflict_do_nothing(
            index_elements=list(unique), index_where=where
        )
        if returning is None:
            conn.execute(insert, list(rows))
            return []
        # Each row's values as parameters of one statement, not built into it:
        # SQLAlchemy then reuses its compiled form, where ``values(row)`` would
        # build (and key for its cache) a parameter per column every time.
        returns = insert.returning(returning)
        return [
            value
            for row in rows
            for value in conn.execute(
                *((returns, row) if bindable(row) else (returns.values(row),))
            ).scalars()
        ]

    def log_events(self, conn: sa.Connection, events: Sequence[dict[str, Any]]) -> None:
        if events:
            LOG_EVENT.many(conn, events)

    # -- runs ----------------------------------------------------------------

    def enqueue(
        self, conn: sa.Connection, new_runs: Sequence[NewRun], now: float | None
    ) -> list[tuple[int, bytes]]:
        """A batch due at the clock in one statement (ENQUEUE_BATCH), any other in one
        ``executemany`` on the driver; then the created ones read back.

        One writer at a time, so the runs this transaction creates are exactly
        those with an id above the largest one before it (see ENQUEUE_ROW).
        """
        if len(new_runs) == 1 and now is None:  # the common submit: one statement
            (new,) = new_runs
            row = ENQUEUE_ONE_ROW.first_of(conn, _clocked_values(new))
            return [] if row is None else [(row[0], new.key_digest)]
        if now is None and not any(new.delay or new.not_before is not None for new in new_runs):
            # Every run due at the clock: their claim order needs no time.
            clocked = batch_params(in_claim_order(new_runs, 0.0), 0.0)
            if clocked is not None:
                ENQUEUE_BATCH_CLOCKED.tuples(conn, clocked)
                rows = CREATED_BY_LAST_INSERT.tuples(conn, {})
                return [(row[0], bytes(row[1])) for row in rows]
        if now is None:
            now = self.clock(conn)
        after = LAST_RUN_ID.first(conn, {})[0]
        new_runs = in_claim_order(new_runs, now)
        batch = batch_params(new_runs, now)
        if batch is not None:
            ENQUEUE_BATCH.tuples(conn, batch)
        else:
            ENQUEUE_ROW.many_rows(conn, [run_values(new, now) for new in new_runs])
        return [(row[0], bytes(row[1])) for row in CREATED_RUNS.tuples(conn, {"after": after})]

    enqueues_committed = True

    def check_submitter(self) -> None:
        # A thread inside a write of this store (ctx.transaction(), say) that
        # queued behind another thread's submit would wait for that submit,
        # which waits for this thread's write to end: it is refused instead.
        self.group_commit.check_outside()

    def enqueue_committed(self, new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        """:meth:`enqueue` in a write transaction of its own, committed on return.

        The submits that threads of this process make while one is being
        written and committed arrive here merged
        (:mod:`~ferryman.store.shared_submits`): one insert for all of them
        (a batch due at the clock is one statement) instead of one each,
        which is what the group commit alone would share. Under the write
        lock, SQLite's work per run of a batch is a tenth of a lone run's.
        """
        with self.group_commit.transaction() as conn:
            return self.enqueue(conn, new_runs, None)

    def prepared(self, statement: sa.Executable) -> Prepared:
        # On the driver, as the plain claim: a limited claim reads its due runs
        # and its job's bucket while holding the write lock too.
        assert isinstance(statement, sa.ClauseElement)
        return DriverStatement(statement).rows

    def expired_leases(
        self, conn: sa.Connection, *, now: float, jobs: Sequence[str], limit: int
    ) -> Sequence[Any]:
        return EXPIRED.rows(conn, {"now": now, "jobs": json_list(jobs), "limit": limit})

    def claim(self, conn: sa.Connection, request: ClaimRequest) -> list[Any]:
        """Walk each job's due queue in index order, keep the first; lease them with the rest."""
        candidates: list[tuple[int, float, int]] = []
        if request.room > 0:
            for job in request.jobs:
                candidates.extend(
                    (-priority, available_at, run_id)
                    for run_id, priority, available_at in DUE.rows(
                        conn, {"job": job, "now": request.now, "limit": request.room}
                    )
                )
        due = [run_id for _, _, run_id in sorted(candidates)[: max(request.room, 0)]]
        return self.lease(conn, [*request.reclaim, *due], request)

    def lease(
        self, conn: sa.Connection, run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        if not run_ids:
            self.log_events(conn, request.events)
            return []
        params = {
            "owner": request.worker_id,
            "expires_at": request.expires_at,
            "at": request.now,
            "ids": json_list(run_ids),
        }
        return self._logged_claims(conn, LEASE.rows(conn, params), run_ids, request)

    def lease_queued(
        self, conn: sa.Connection, run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        # One writer at a time: nothing changed the runs since this transaction read them.
        return self.lease(conn, run_ids, request)

    def succeed_within(
        self, conn: sa.Connection, lease: Lease, *, attempt: int, worker_id: str
    ) -> bool:
        row = SUCCEED.first(conn, {"run_id": lease.run_id, "token": lease.token})
        if row is None:
            return False
        success = event_row(
            lease.run_id, RunEventKind.SUCCEEDED, row[0], attempt, worker_id, lease.token
        )
        LOG_EVENT.many(conn, [success])
        return True

    def finish(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], *, worker_id: str, now: float
    ) -> tuple[set[Lease], set[Lease]]:
        """One fenced UPDATE per outcome: microseconds each on the driver."""
        accepted: set[Lease] = set()
        for outcome in outcomes:
            held = {"run_id": outcome.lease.run_id, "token": outcome.lease.token}
            if outcome.kind is OutcomeKind.SUCCEEDED:
                held_yet = SUCCEED_FENCED.changed(conn, held) == 1
            else:
                held_yet = END.changed(conn, {**held, **end_values(outcome, now)}) == 1
            if held_yet:
                accepted.add(outcome.lease)
        return accepted, set()

    # -- errors --------------------------------------------------------------

    def failure(self, doing: str, orig: BaseException) -> StoreError | None:
        if not isinstance(orig, sqlite3.Error):
            return None
        text = str(orig)
        where = self.safe_url
        if "database is locked" in text:
            return StoreUnavailable(
                f"store {where}: another process held the database's write lock past the busy "
                f"timeout while {doing} (SQLite: {text})"
            )
        if "disk I/O error" in text or "database or disk is full" in text:
            directory = Path(self.url.database or "").resolve().parent
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

    def unreachable(self, orig: BaseException | None) -> bool:
        return isinstance(orig, sqlite3.OperationalError) and "unable to open database file" in str(
            orig
        )

    @staticmethod
    def is_database_failure(error: BaseException) -> bool:
        if not isinstance(error, sqlite3.Error):
            return False
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in SQLITE_FAILURES


# SQLite's primary result codes that mean the database, not the statement,
# failed: busy or locked past the timeout, out of memory, an I/O error, a full
# disk, a file that cannot be opened, a lock protocol error.
SQLITE_FAILURES = frozenset({5, 6, 7, 10, 13, 14, 15})


def _clocked_values(new: NewRun) -> tuple[Any, ...]:
    """The values of :data:`ENQUEUE_ONE_ROW`, in its parameters' order (checked at import):
    a run's row less the times the clock gives."""
    return (
        new.job,
        new.run_key,
        new.key_digest,
        new.payload_json,
        QUEUED,
        0,
        new.max_attempts,
        new.not_before,  # available_at: not_before, delay, delay, not_before
        new.delay,
        new.delay,
        new.not_before,
        new.priority,
        new.concurrency_key,
        new.concurrency_digest,
        0,
    )


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


def _engine(url: sa.URL, pool_size: int, busy_timeout: float, begin: str) -> Engine:
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
