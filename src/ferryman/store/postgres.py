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
  semantics; the contract tests run every store. A worker's (claim,
  finish) are in :mod:`ferryman.store.postgres_leases`.
* Wake-ups: writers send ``NOTIFY ferryman_runs, '<job>'`` inside the
  transaction that makes runs due, so the notification is delivered only if
  that transaction commits; a :class:`Listener` thread in each worker wakes
  it. Notifications are an optimisation: a worker that misses one (the
  listener reconnecting, say) still finds the run at its next poll.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
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
from ferryman.store.postgres_leases import (
    CLAIM_COMMITTED,
    CLAIM_DUE,
    LEASE_QUEUED,
    SUCCEED,
    SUCCEED_COMMITTED,
    SUCCEED_ONE,
    CommittedStatements,
    driver_rows,
    lease_due_statement,
)
from ferryman.store.run_rows import Lease, NewRun, Outcome, OutcomeKind, lock_in_id_order
from ferryman.store.schema import runs

log = logging.getLogger("ferryman.store")


CLOCK: sa.ColumnElement[float] = sa.literal_column(
    "extract(epoch from clock_timestamp())::float8", sa.Double()
)

# Unique by the key's digest (see ferryman.store.keys): a key of any length
# fits. Rows are inserted in the order given, which the caller sorted. Arrays in
# binary (%b, see ENQUEUE_MANY), so run as the driver's SQL (exec_driver_sql).
ENQUEUE = f"""
    WITH inserted AS (
        INSERT INTO {runs.name} (job, run_key, key_digest, payload, status, attempt,
                                 max_attempts, available_at, lease_token, created_at,
                                 updated_at, priority, concurrency_key, concurrency_digest)
        SELECT job, run_key, key_digest, payload, 'queued', 0, max_attempts, available_at, 0,
               %(now)s, %(now)s, priority, concurrency_key, concurrency_digest
        FROM unnest(%(jobs)b::text[], %(run_keys)b::text[], %(digests)b::bytea[],
                    %(payloads)b::text[], %(max_attempts)b::integer[],
                    %(available_at)b::float8[], %(priorities)b::integer[],
                    %(concurrency_keys)b::text[], %(concurrency_digests)b::bytea[])
             AS input(job, run_key, key_digest, payload, max_attempts, available_at,
                      priority, concurrency_key, concurrency_digest)
        ON CONFLICT (key_digest) DO NOTHING
        RETURNING id, key_digest
    )
    SELECT id, key_digest FROM inserted
"""

# A submit on a connection of its own, committed by PostgreSQL as the one
# statement it is (autocommit): the clock, the runs and the wake-ups in one
# round trip. A run with a concurrency key only once its
# job's row in ferryman_job_limits is committed (ferryman.store.queue). Run on
# psycopg's cursor, so it is prepared once per connection and costs none of
# SQLAlchemy's per-execution work. The wake-ups are a scalar subquery of the
# result, so they are sent once, and only when a run was created; NOTIFY is
# delivered only if the statement commits. Rows go in in the order given (by key).
_ENQUEUE_COMMITTED = f"""
    WITH clock AS (
        SELECT extract(epoch from clock_timestamp())::float8 AS now
    ), inserted AS (
        INSERT INTO {runs.name} (job, run_key, key_digest, payload, status, attempt,
                                 max_attempts, available_at, lease_token, created_at,
                                 updated_at, priority, concurrency_key, concurrency_digest)
        SELECT input.job, input.run_key, input.key_digest, input.payload, 'queued', 0,
               input.max_attempts, greatest(clock.now + input.delay, input.not_before), 0,
               clock.now, clock.now, input.priority, input.concurrency_key,
               input.concurrency_digest
        FROM {{input}}
             AS input(job, run_key, key_digest, payload, max_attempts, delay, not_before,
                      priority, concurrency_key, concurrency_digest, position)
        CROSS JOIN clock
        ORDER BY input.position
        ON CONFLICT (key_digest) DO NOTHING
        RETURNING id, key_digest, job
    ), woken AS (
        SELECT pg_notify('{CHANNEL}', job) FROM (SELECT DISTINCT job FROM inserted) AS jobs
    )
    SELECT id, key_digest, (SELECT count(*) FROM woken) AS woken FROM inserted
"""
# Many runs travel as arrays (a handful of parameters, whatever the batch's size),
# in binary (%b): in text psycopg quotes each payload and key digest with a regular
# expression, 3.5 us each against 0.2 us (measured). One run as plain values, in text.
ENQUEUE_MANY = _ENQUEUE_COMMITTED.replace(
    "{input}",
    """unnest(%(job)b::text[], %(run_key)b::text[], %(key_digest)b::bytea[],
                    %(payload)b::text[], %(max_attempts)b::integer[], %(delay)b::float8[],
                    %(not_before)b::float8[], %(priority)b::integer[],
                    %(concurrency_key)b::text[], %(concurrency_digest)b::bytea[])
                    WITH ORDINALITY""",
)
# Runs alike in all but key and payload (one job's, with the same options: the
# usual ``app.submit(job, *requests)``) send the rest once, as values: three
# lists instead of ten, 1.2 ms less of the client's CPU and 1.6 ms less of the
# server's per 1,000 runs (measured, of about 3 and 15). The three go as one
# value each, not as arrays (psycopg dumps an array element by element, 0.45 ms
# each per 1,000 runs): the payloads, JSON already, joined into a JSON array
# whose elements json_array_elements gives back verbatim (the json type keeps
# its text as written); the keys as a JSON array of strings (non-ASCII written
# as it is, so any database encoding reads them as a text array would); the
# digests, 32 bytes each, one after another.
ENQUEUE_ALIKE = _ENQUEUE_COMMITTED.replace(
    "{input}",
    """(SELECT %(job)s::text, run_key, substring(%(key_digest)s::bytea
                    FROM position::integer * 32 - 31 FOR 32), payload::text,
                    %(max_attempts)s::integer, %(delay)s::float8, %(not_before)s::float8,
                    %(priority)s::integer, %(concurrency_key)s::text,
                    %(concurrency_digest)s::bytea, position
             FROM ROWS FROM (json_array_elements_text(%(run_key)s::json),
                             json_array_elements(%(payload)s::json))
                  WITH ORDINALITY AS alike(run_key, payload, position))""",
)
# (The concurrency key's digest follows the key.)
_SHARED_BY_ALIKE = attrgetter(
    "job", "max_attempts", "delay", "not_before", "priority", "concurrency_key"
)


# The keys of ENQUEUE_ALIKE: a string's characters as they are, but for quotes,
# backslashes and control characters (NUL and lone surrogates were refused).
_KEYS_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _for_new_keys(statement: str) -> str:
    """``statement`` for keys taken to be new: a plain insert.

    ON CONFLICT inserts each row speculatively (a check of the unique index
    before the insert, a speculative lock, a confirmation record in the WAL),
    8-12 % of a batch's server CPU (measured). A key that exists after all
    fails the whole statement on the unique index, so nothing of it is
    committed or notified, and the batch goes again with ON CONFLICT: dedupe
    rests on the unique index either way.
    """
    return re.sub(r"\n *ON CONFLICT \(key_digest\) DO NOTHING\n", "\n", statement)


ENQUEUE_MANY_NEW = _for_new_keys(ENQUEUE_MANY)
ENQUEUE_ALIKE_NEW = _for_new_keys(ENQUEUE_ALIKE)
# The constraint such a key meets (named by the schema's naming convention).
_KEY_DIGEST_UNIQUE = next(
    str(constraint.name)
    for constraint in runs.constraints
    if isinstance(constraint, sa.UniqueConstraint)
    and [column.name for column in constraint.columns] == ["key_digest"]
)
# One run, the common submit, without what only a batch needs (the input relation,
# its order, DISTINCT wake-ups): the clock read once, so the run's times agree; the
# wake-up sent in RETURNING, so only if the run was created. A plain INSERT rather
# than a CTE read by a SELECT: 6-8 us (5-7 %) less executor time a run (measured).
ENQUEUE_ONE = f"""
    INSERT INTO {runs.name} (job, run_key, key_digest, payload, status, attempt,
                             max_attempts, available_at, lease_token, created_at,
                             updated_at, priority, concurrency_key, concurrency_digest)
    SELECT %(job)s::text, %(run_key)s::text, %(key_digest)s::bytea, %(payload)s::text,
           'queued', 0, %(max_attempts)s::integer,
           greatest(clock.now + %(delay)s::float8, %(not_before)s::float8), 0,
           clock.now, clock.now, %(priority)s::integer, %(concurrency_key)s::text,
           %(concurrency_digest)s::bytea
    FROM (SELECT extract(epoch from clock_timestamp())::float8 AS now) AS clock
    ON CONFLICT (key_digest) DO NOTHING
    RETURNING id, key_digest, pg_notify('{CHANNEL}', job)
"""
# The usual single submit is of a new key: written as a plain insert, it saves
# the speculative insertion (a WAL record of its own) that ON CONFLICT makes.
ENQUEUE_ONE_NEW = _for_new_keys(ENQUEUE_ONE)


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
        if len(new_runs) == 1:
            new_keys, deduplicating, params = ENQUEUE_ONE_NEW, ENQUEUE_ONE, _one_row(new_runs[0])
        elif len({_SHARED_BY_ALIKE(new) for new in new_runs}) == 1:
            new_keys, deduplicating, params = ENQUEUE_ALIKE_NEW, ENQUEUE_ALIKE, _alike(new_runs)
        else:
            new_keys, deduplicating, params = ENQUEUE_MANY_NEW, ENQUEUE_MANY, _arrays(new_runs)
        with submits.lock:
            if not self._submits_meet_existing_keys:
                try:
                    return submits.rows(new_keys, params)
                except sa.exc.IntegrityError as exc:
                    if _constraint(exc) != _KEY_DIGEST_UNIQUE:
                        raise
            created = submits.rows(deduplicating, params)
            self._submits_meet_existing_keys = len(created) < len(new_runs)
            return created

    @property
    def _submits(self) -> SubmitConnection:
        submits = self.__dict__.get("_submit_connection")
        if submits is None or submits.pid != os.getpid():
            # A forked child's own; the parent's is the parent's, never closed here.
            submits = self.__dict__["_submit_connection"] = SubmitConnection(self._conninfo)
        return submits

    @property
    def _committed(self) -> CommittedStatements:
        committed = self.__dict__.get("_committed_statements")
        if committed is None or committed.pid != os.getpid():
            # A forked child's own, as the submit connection.
            committed = CommittedStatements(self._conninfo)
            self.__dict__["_committed_statements"] = committed
        return committed

    def dispose(self) -> None:
        submits = self.__dict__.pop("_submit_connection", None)
        if submits is not None and submits.pid == os.getpid():
            submits.close()
        committed = self.__dict__.pop("_committed_statements", None)
        if committed is not None and committed.pid == os.getpid():
            committed.close()
        super().dispose()

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
        """Successes in one statement that logs them too; then the others one by one.

        ``outcomes`` come in id order, and so the successes lock their rows;
        the others would then lock theirs out of that order, so a mixed batch
        takes its locks in id order first.
        """
        successes = [o.lease for o in outcomes if o.kind is OutcomeKind.SUCCEEDED]
        if 0 < len(successes) < len(outcomes):
            lock_in_id_order(conn, [outcome.lease for outcome in outcomes])
        accepted: set[Lease] = set()
        if successes:
            params = {
                "ids": [lease.run_id for lease in successes],
                "tokens": [lease.token for lease in successes],
                "now": now,
                "worker": worker_id,
            }
            done = set(driver_rows(conn, SUCCEED, params))  # (id, token): equal to the leases
            accepted = {lease for lease in successes if lease in done}
        logged = set(accepted)  # the statement wrote their events
        for outcome in outcomes:
            if outcome.kind is not OutcomeKind.SUCCEEDED and self.end(conn, outcome, now):
                accepted.add(outcome.lease)
        return accepted, logged

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


def _one_row(new: NewRun) -> dict[str, Any]:
    return {
        "job": new.job,
        "run_key": new.run_key,
        "key_digest": new.key_digest,
        "payload": new.payload_json,
        "max_attempts": new.max_attempts,
        "delay": new.delay,
        "not_before": new.not_before,
        "priority": new.priority,
        "concurrency_key": new.concurrency_key,
        "concurrency_digest": new.concurrency_digest,
    }


def _alike(new_runs: Sequence[NewRun]) -> dict[str, Any]:
    """Parameters of ENQUEUE_ALIKE: the first run's options, everyone's key and payload."""
    first = new_runs[0]
    return {
        "job": first.job,
        "max_attempts": first.max_attempts,
        "delay": first.delay,
        "not_before": first.not_before,
        "priority": first.priority,
        "concurrency_key": first.concurrency_key,
        "concurrency_digest": first.concurrency_digest,
        "run_key": _KEYS_JSON.encode([new.run_key for new in new_runs]),
        "key_digest": b"".join([new.key_digest for new in new_runs]),
        "payload": f"[{','.join([new.payload_json for new in new_runs])}]",
    }


def _arrays(new_runs: Sequence[NewRun]) -> dict[str, list[Any]]:
    return {
        "job": [new.job for new in new_runs],
        "run_key": [new.run_key for new in new_runs],
        "key_digest": [new.key_digest for new in new_runs],
        "payload": [new.payload_json for new in new_runs],
        "max_attempts": [new.max_attempts for new in new_runs],
        "delay": [new.delay for new in new_runs],
        "not_before": [new.not_before for new in new_runs],
        "priority": [new.priority for new in new_runs],
        "concurrency_key": [new.concurrency_key for new in new_runs],
        "concurrency_digest": [new.concurrency_digest for new in new_runs],
    }


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
