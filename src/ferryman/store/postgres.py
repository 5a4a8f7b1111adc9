"""The PostgreSQL store: one statement per hot path, wake-ups by LISTEN/NOTIFY.

* ``postgresql://user@host/dbname``, always through psycopg 3.
* The hot paths (enqueue, claim, complete) are one statement (one round
  trip) each where the portable code of
  :class:`~ferryman.store.dialect.Backend` needs two or three:
  data-modifying CTEs write rows and their processing-log rows together (a
  new run has none: its row says it was requested, see
  :meth:`ferryman.store.queue.RunQueue.get_events`), and batches travel as
  arrays (``unnest``), so a batch costs a handful of parameters instead of
  one per value. They implement exactly the portable
  semantics; the contract tests run every store. The submits' statements
  are in :mod:`ferryman.store.postgres_enqueue`, a worker's (claim,
  finish) in :mod:`ferryman.store.postgres_leases`.
* Wake-ups: writers send ``NOTIFY ferryman_runs, '<job>'`` inside the
  transaction that makes runs due, so the notification is delivered only if
  that transaction commits; a :class:`Listener` thread in each worker wakes
  it. Notifications are an optimisation: a worker that misses one (the
  listener reconnecting, say) still finds the run at its next poll.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects.postgresql import insert as postgresql_insert

from ferryman.errors import ConfigurationError
from ferryman.store import faults
from ferryman.store.dialect import (
    CONNECT_TIMEOUT_S,
    Backend,
    ClaimRequest,
    LeasedDue,
    Prepared,
    bindable,
    safe_url,
)
from ferryman.store.postgres_connections import CHANNEL, Listener, SubmitConnection
from ferryman.store.postgres_enqueue import ENQUEUE, KEY_DIGEST_UNIQUE, submit_statements
from ferryman.store.postgres_leases import (
    CLAIM_COMMITTED,
    CLAIM_DUE,
    END,
    LEASE_QUEUED,
    SUCCEED,
    SUCCEED_COMMITTED,
    SUCCEED_ONE,
    CommittedStatements,
    driver_rows,
    end_params,
    lease_due_statement,
)
from ferryman.store.run_rows import Lease, NewRun, Outcome, OutcomeKind

log = logging.getLogger("ferryman.store")


CLOCK: sa.ColumnElement[float] = sa.literal_column(
    "extract(epoch from clock_timestamp())::float8", sa.Double()
)


@functools.cache
def _lease_due_sql(due: sa.Select[Any], dialect: sa.Dialect) -> tuple[str, dict[str, Any]]:
    """The statement of :meth:`PostgresBackend.lease_due` for ``due``, and its bound defaults."""
    compiled = due.compile(dialect=dialect)
    return lease_due_statement(compiled.string), dict(compiled.params)


class PostgresBackend(Backend):
    """A store in a PostgreSQL database (see the module)."""

    name = "postgres"
    url_names = ("postgresql", "postgres")
    # clock_timestamp() is evaluated as each row is produced, and a volatile
    # expression over a locking subquery only once the row is locked. (Not
    # MariaDB: SYSDATE() in a statement promises nothing about InnoDB's read view.)
    clock_follows_locks = True
    example_url = "postgresql://user@host/dbname"
    now = CLOCK

    @classmethod
    def normalise(cls, url: sa.URL) -> sa.URL:
        if url.get_driver_name() not in ("psycopg", "", "postgres", "postgresql"):
            raise ConfigurationError(
                f"unsupported PostgreSQL driver {url.get_driver_name()!r} in "
                f"{safe_url(url)}; ferryman uses psycopg 3 (postgresql+psycopg://)"
            )
        return url.set(drivername="postgresql+psycopg")

    @classmethod
    def open(cls, url: sa.URL, *, pool_size: int) -> PostgresBackend:
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
        return cls(url, engine)

    @property
    def _conninfo(self) -> str:
        # psycopg takes a libpq URL: the same URL without SQLAlchemy's driver suffix.
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def ping(self, timeout: float) -> bool:
        """Asked on a connection of its own: after an outage the pool holds dead ones."""
        try:
            with psycopg.connect(
                self._conninfo,
                connect_timeout=max(1, math.ceil(timeout)),
                options=f"-c statement_timeout={round(timeout * 1000)}",
                autocommit=True,
            ) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

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
        # PostgreSQL waits here for a concurrent inserter's transaction and then
        # skips the row instead of raising a unique violation.
        insert = postgresql_insert(table).on_conflict_do_nothing(
            index_elements=list(unique), index_where=where
        )
        if returning is None:
            conn.execute(insert.values(list(rows)))
            return []
        if len(rows) == 1 and bindable(rows[0]):
            # As parameters, so that the compiled statement is reused.
            return list(conn.execute(insert.returning(returning), rows[0]).scalars())
        return list(conn.execute(insert.values(list(rows)).returning(returning)).scalars())

    # -- runs ----------------------------------------------------------------

    def enqueue(
        self, conn: sa.Connection, new_runs: Sequence[NewRun], now: float | None
    ) -> list[tuple[int, bytes]]:
        now = self.clock(conn) if now is None else now
        rows = conn.exec_driver_sql(
            ENQUEUE,
            {
                "jobs": [new.job for new in new_runs],
                "run_keys": [new.run_key for new in new_runs],
                "digests": [new.key_digest for new in new_runs],
                "payloads": [new.payload_json for new in new_runs],
                "max_attempts": [new.max_attempts for new in new_runs],
                "available_at": [new.due_at(now) for new in new_runs],
                "priorities": [new.priority for new in new_runs],
                "concurrency_keys": [new.concurrency_key for new in new_runs],
                "concurrency_digests": [new.concurrency_digest for new in new_runs],
                "now": now,
            },
        )
        return [(row.id, bytes(row.key_digest)) for row in rows]

    enqueues_committed = True
    # Whether the last submit met keys that existed: the next one is then written
    # with ON CONFLICT at once (a producer resubmitting its keys pays for no failed
    # statement), until a submit finds every key new again. Guarded by the submit lock.
    _submits_meet_existing_keys = False

    def enqueue_committed(self, new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        """One autocommit statement on the submit connection (ENQUEUE_ONE, _ALIKE, _MANY).

        ``new_runs`` have one key each (the caller merged them).
        """
        submits = self._submits
        new_keys, deduplicating, params = submit_statements(new_runs)
        with submits.lock:
            if not self._submits_meet_existing_keys:
                try:
                    return submits.rows(new_keys, params)
                except sa.exc.IntegrityError as exc:
                    if _constraint(exc) != KEY_DIGEST_UNIQUE:
                        raise
            created = submits.rows(deduplicating, params)
            self._submits_meet_existing_keys = len(created) < len(new_runs)
            return created

    @property
    def _submits(self) -> SubmitConnection:
        return self.process_connection("submits", lambda: SubmitConnection(self._conninfo))

    @property
    def _committed(self) -> CommittedStatements:
        return self.process_connection(
            "committed statements", lambda: CommittedStatements(self._conninfo)
        )

    commits_alone = True

    def claim_committed(
        self, *, worker_id: str, jobs: Sequence[str], limit: int, lease_seconds: float
    ) -> tuple[list[Any], float] | None:
        """The plain claim in one autocommit statement (CLAIM_COMMITTED); None: not now."""
        params = {
            "jobs": list(jobs),
            "limit": limit,
            "worker": worker_id,
            "lease_seconds": lease_seconds,
        }
        # The jobs seen with a limits row (ferryman.store.limits.Limits.mark_keyed).
        limited_jobs: set[str] = self.__dict__.setdefault("_limited_jobs", set())
        if not limited_jobs.isdisjoint(jobs):
            return None
        rows = self._committed.rows(CLAIM_COMMITTED, params)
        *_, now, expired, limited = rows[0]
        if limited:  # a job's limits row is never deleted: claimed in transactions from now on
            limited_jobs.update(limited)
        if expired or limited:
            return None
        return [row for row in rows if row[0] is not None], now

    def succeed_committed(self, leases: Sequence[Lease], *, worker_id: str) -> set[Lease] | None:
        params = {
            "ids": [lease.run_id for lease in leases],
            "tokens": [lease.token for lease in leases],
            "worker": worker_id,
        }
        done = set(self._committed.rows(SUCCEED_COMMITTED, params))  # (id, token) pairs
        return {lease for lease in leases if lease in done}

    def claim(self, conn: sa.Connection, request: ClaimRequest) -> list[Any]:
        """Reclaimed runs by the portable lease; due ones in one statement that logs them."""
        claimed = self.lease(conn, request.reclaim, request)
        if request.room <= 0:
            return claimed
        params = {
            "now": request.now,
            "jobs": list(request.jobs),
            "limit": request.room,
            "worker": request.worker_id,
            "expires": request.expires_at,
        }
        return [*claimed, *driver_rows(conn, CLAIM_DUE, params)]

    def prepared(self, statement: sa.Executable) -> Prepared:
        # On psycopg's cursor, as the plain claim: a limited claim reads up to a
        # claim's worth of due runs, and SQLAlchemy's rows cost microseconds each.
        assert isinstance(statement, sa.ClauseElement)
        compiled = statement.compile(dialect=self.engine.dialect)
        sql, defaults = compiled.string, dict(compiled.params)

        def rows(conn: sa.Connection, params: dict[str, Any]) -> Sequence[Any]:
            driver = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
            cursor = driver.cursor(row_factory=namedtuple_row)
            try:
                cursor.execute(sql, {**defaults, **params}, prepare=True)
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.Error as exc:
                raise faults.driver_error(sql, exc, driver) from exc
            finally:
                cursor.close()

        return rows

    def lease_queued(
        self, conn: sa.Connection, run_ids: Sequence[int], request: ClaimRequest
    ) -> list[Any]:
        if not run_ids:
            return []
        params = {
            "ids": list(run_ids),
            "now": request.now,
            "worker": request.worker_id,
            "expires": request.expires_at,
        }
        return driver_rows(conn, LEASE_QUEUED, params)

    def lease_due(
        self, conn: sa.Connection, due: sa.Select[Any], params: dict[str, Any], worker_id: str
    ) -> LeasedDue | None:
        sql, defaults = _lease_due_sql(due, self.engine.dialect)
        rows = driver_rows(conn, sql, {**defaults, **params, "worker": worker_id})
        leased = [row for row in rows if row[0] is not None]
        now, scanned, picked = rows[0][-3:]
        return LeasedDue(rows=leased, at=float(now), scanned=scanned, picked=picked)

    def succeed_within(
        self, conn: sa.Connection, lease: Lease, *, attempt: int, worker_id: str
    ) -> bool:
        driver = conn.connection.dbapi_connection
        cursor = driver.cursor()  # type: ignore[union-attr]
        params = {"run_id": lease.run_id, "token": lease.token}
        try:
            cursor.execute(SUCCEED_ONE, {**params, "attempt": attempt, "worker": worker_id})
            return cursor.fetchone() is not None
        except psycopg.Error as exc:
            # Raised as SQLAlchemy would, so that a connection lost here is known
            # for the store's failure and not the job's.
            raise faults.driver_error(SUCCEED_ONE, exc, driver) from exc
        finally:
            cursor.close()

    def finish(
        self, conn: sa.Connection, outcomes: Sequence[Outcome], *, worker_id: str, now: float
    ) -> tuple[set[Lease], set[Lease]]:
        """The whole batch in one statement that logs it too (``outcomes`` in id order,
        and so the statement locks their rows): successes alone take :data:`SUCCEED`,
        a batch with any other outcome :data:`END`."""
        if all(outcome.kind is OutcomeKind.SUCCEEDED for outcome in outcomes):
            params = {
                "ids": [outcome.lease.run_id for outcome in outcomes],
                "tokens": [outcome.lease.token for outcome in outcomes],
                "now": now,
                "worker": worker_id,
            }
            statement = SUCCEED
        else:
            params, statement = end_params(outcomes, now, worker_id), END
        done = set(driver_rows(conn, statement, params))  # (id, token): equal to the leases
        accepted = {outcome.lease for outcome in outcomes if outcome.lease in done}
        return accepted, accepted

    # -- wake-ups ------------------------------------------------------------

    def wake(self, conn: sa.Connection, jobs: Iterable[str]) -> None:
        """Queue a notification per job; PostgreSQL delivers them on commit."""
        for job in sorted(set(jobs)):
            conn.execute(sa.select(sa.func.pg_notify(CHANNEL, job)))

    def listener(self, on_job: Callable[[str], None], *, name: str) -> Listener:
        return Listener(self._conninfo, on_job, name=name)

    # -- errors --------------------------------------------------------------

    def refusal(self, orig: BaseException) -> str | None:
        text = str(orig)
        for pattern, advice in _REFUSALS:
            found = re.search(pattern, text)
            if found is not None:
                return f"{found.group(0)} ({advice})"
        if getattr(orig, "sqlstate", None) in _REFUSAL_SQLSTATES:
            return text.strip().splitlines()[0]
        return None

    def unreachable(self, orig: BaseException | None) -> bool:
        if not isinstance(orig, psycopg.OperationalError):
            return False
        # No SQLSTATE: the client never got an answer. Class 08 is a connection
        # exception, 57P0x an administrator or crash shutdown of the server.
        sqlstate = orig.sqlstate
        return sqlstate is None or sqlstate.startswith("08") or sqlstate.startswith("57P")

    def contended(self, orig: BaseException) -> bool:
        # A deadlock's victim (40P01); a lock not had within lock_timeout (55P03).
        return getattr(orig, "sqlstate", None) in ("40P01", "55P03")

    @staticmethod
    def is_database_failure(error: BaseException) -> bool:
        if not isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        # No SQLSTATE on an operational error: the server never answered.
        return error.sqlstate is None or error.sqlstate.startswith(FAILURES)


def _constraint(error: sa.exc.DBAPIError) -> str | None:
    """The constraint a statement violated, as the server named it."""
    diagnostic = getattr(error.orig, "diag", None)
    return None if diagnostic is None else diagnostic.constraint_name


# SQLSTATEs (prefixes) that mean the database, not the statement, failed: a
# connection exception (08), insufficient resources (53: disk full, out of
# memory, too many connections), an administrator or crash shutdown
# (57P01-57P03), an I/O error; and a deadlock (40P01), whose victim the server
# chose by timing, not by anything the statement did (as on MariaDB).
FAILURES = ("08", "53", "57P01", "57P02", "57P03", "58030", "40P01")

# Refusals at connect time that no retry cures. libpq reports them without a
# SQLSTATE, so the server's message is matched (servers whose lc_messages is
# not English are reported as unreachable, as before).
_REFUSALS = (
    ('database "[^"]*" does not exist', "create it, or name another database in the store URL"),
    ('role "[^"]*" does not exist', "create the role, or name another user in the store URL"),
    ('password authentication failed for user "[^"]*"', "check the password in the store URL"),
    ("no pg_hba.conf entry for [^\n]*", "the server's pg_hba.conf does not admit this connection"),
    ("no password supplied", "put the password in the store URL or in ~/.pgpass"),
)
_REFUSAL_SQLSTATES = ("3D000", "28000", "28P01")  # no database; role or password
