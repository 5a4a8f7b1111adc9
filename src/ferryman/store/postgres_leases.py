"""The statements of a worker's side of the queue on PostgreSQL: claim and finish.

Each is one statement (one round trip) that writes the runs and their
processing-log rows together (data-modifying CTEs), with batches as arrays.
They run on psycopg's cursor (:func:`driver_rows`): prepared once per
connection, their rows fetched as plain tuples in one call, none of
SQLAlchemy's work per row, which a worker paid for every run it claimed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, cast

import psycopg
import sqlalchemy as sa

from ferryman.store import faults
from ferryman.store.dialect import CONNECT_TIMEOUT_S
from ferryman.store.run_rows import Outcome, end_values, outcome_event
from ferryman.store.schema import job_limits, run_events, runs


def _claim_statement(
    due: str,
    *,
    now: str = "%(now)s",
    expires: str = "%(expires)s",
    before: str = "",
    result: str = "SELECT * FROM claimed ORDER BY priority DESC, available_at, id",
) -> str:
    """Lease the runs the ``due`` query selects (locked), and log their claim: one statement.

    The update finds the runs by primary key (``= ANY(ARRAY(...))``): joined
    with ``FROM due`` instead, the planner hashes the whole runs table for
    every claim, a cost that grows with the table, not with the claim. Run on
    psycopg's cursor (:func:`driver_rows`): its rows come back as plain
    tuples, in the order of :data:`~ferryman.store.run_rows.CLAIMED_COLUMNS`.
    ``now`` and ``expires``: the claim's time and its leases' end (parameters
    by default); ``before``: common table expressions ``due`` may read;
    ``result``: the statement's rows.
    """
    return f"""
        WITH {before}due AS ({due}
        ), claimed AS (
            UPDATE {runs.name} AS r
            SET status = 'running', attempt = r.attempt + 1, lease_owner = %(worker)s,
                lease_token = r.lease_token + 1, lease_expires_at = {expires},
                started_at = {now}, updated_at = {now}
            WHERE r.id = ANY(ARRAY(SELECT id FROM due))
            RETURNING r.id, r.job, r.run_key, r.payload, r.attempt, r.max_attempts,
                      r.lease_token, r.checkpoint, r.priority, r.available_at
        ), logged AS (
            INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
            SELECT id, 'claimed', {now}, attempt, %(worker)s, lease_token FROM claimed
        )
        {result}
        """


def _plain_due(now: str, ready: str = "") -> str:
    """The first due runs of the worker's jobs (higher priorities first, then the
    oldest), skipping rows another worker is locking right now; a run with a
    concurrency key is the limited path's (ferryman.store.limits).

    Each job's queue is walked in index order (LATERAL), so the plan stays a
    short index scan however many runs are due. ``now``: the claim's time;
    ``ready``: a further condition (none is due while it is false).
    """
    return f"""
            SELECT candidate.id
            FROM unnest(%(jobs)s::text[]) AS worker_job(job)
            CROSS JOIN LATERAL (
                SELECT id, priority, available_at FROM {runs.name}
                WHERE job = worker_job.job AND status = 'queued'
                      AND available_at <= {now}{ready}
                      AND concurrency_digest IS NULL
                ORDER BY priority DESC, available_at, id
                LIMIT %(limit)s::bigint
                FOR UPDATE SKIP LOCKED
            ) AS candidate
            ORDER BY candidate.priority DESC, candidate.available_at, candidate.id
            LIMIT %(limit)s::bigint"""


CLAIM_DUE = _claim_statement(_plain_due("%(now)s::float8"))

_CLOCK = "SELECT extract(epoch from clock_timestamp())::float8 AS now"

# The plain claim as one statement in autocommit, for a worker whose jobs have
# no limits: one round trip, where the claim in a transaction takes six
# (BEGIN, the clock, the expired leases, the limited jobs, the claim, COMMIT),
# each a wait for the server on a busy machine. The clock is read in the
# statement. It claims nothing when a lease of these jobs has expired or one
# of them has a limits row (runs with concurrency keys), and says so: the
# claim in a transaction then settles those (Leases.claim). Each row: a
# claimed run's columns (NULL if none claimed), the clock, whether a lease
# expired, the jobs with a limits row (NULL if none).
CLAIM_COMMITTED = _claim_statement(
    _plain_due(
        "(SELECT now FROM clock)",
        "\n                      AND (SELECT NOT expired AND cardinality(limited) = 0"
        " FROM blocked)",
    ),
    now="(SELECT now FROM clock)",
    expires="(SELECT now FROM clock) + %(lease_seconds)s::float8",
    before=f"""clock AS ({_CLOCK}
        ), blocked AS (
            SELECT EXISTS (
                       SELECT FROM {runs.name}
                       WHERE status = 'running' AND lease_expires_at < (SELECT now FROM clock)
                             AND job = ANY(%(jobs)s::text[])
                   ) AS expired,
                   ARRAY(
                       SELECT job FROM {job_limits.name} WHERE job = ANY(%(jobs)s::text[])
                   ) AS limited
        ), """,
    # The jobs with a limits row only when there are some: an empty array on
    # each of a thousand rows cost the client more to load than the rows' runs.
    result="""SELECT claimed.*, clock.now, blocked.expired,
               CASE WHEN cardinality(blocked.limited) > 0 THEN blocked.limited END
        FROM clock CROSS JOIN blocked LEFT JOIN claimed ON true
        ORDER BY claimed.priority DESC, claimed.available_at, claimed.id""",
)

# A limited claim's runs (ferryman.store.limits): those still queued and not
# locked elsewhere.
LEASE_QUEUED = _claim_statement(
    f"""
            SELECT id FROM {runs.name}
            WHERE id = ANY(%(ids)b::bigint[]) AND status = 'queued'
            FOR UPDATE SKIP LOCKED"""
)


def lease_due_statement(due: str) -> str:
    """A limited claim's pick and lease in one statement (ferryman.store.limits).

    ``due`` reads the first ``scan`` due runs of the job whose key has room,
    in claim order, with the running runs of each one's key
    (``key_running``). Of those, a run is picked while the runs of its key
    running and picked before it number fewer than ``key_concurrency``, up
    to ``room``; the picked runs still queued and not locked elsewhere are
    leased and their claims logged, and the job's rate bucket is charged for
    the runs leased (when ``tokens`` is given); runs found by the ``ctid``
    scanned, no index descent each (one updated since is locked as it now
    is, its status checked again). The claim's time: the clock read once the
    due runs were counted. Each row: a claimed run's columns, that time, the
    runs scanned and picked (run columns NULL if none claimed).
    """
    order = "priority DESC, available_at, id"
    return f"""
        WITH scanned AS ({due}
        ), ranked AS (
            SELECT id, priority, available_at, tid,
                   CASE WHEN concurrency_digest IS NULL THEN 0
                        ELSE key_running - 1 + row_number() OVER (
                            PARTITION BY concurrency_digest ORDER BY {order})
                   END AS ahead
            FROM scanned
        ), picked AS (
            SELECT id, tid FROM ranked WHERE ahead < %(key_concurrency)s::bigint
            ORDER BY {order} LIMIT %(room)s::bigint
        ), stamp AS (
            SELECT extract(epoch from clock_timestamp())::float8 AS now, counted.*
            FROM (SELECT (SELECT count(*) FROM scanned) AS scanned,
                         (SELECT count(*) FROM picked) AS picked) AS counted
        ), locked AS (
            SELECT ctid FROM {runs.name} WHERE ctid = ANY(ARRAY(SELECT tid FROM picked))
            AND status = 'queued' FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE {runs.name} AS r
            SET status = 'running', attempt = r.attempt + 1, lease_owner = %(worker)s,
                lease_token = r.lease_token + 1,
                lease_expires_at = stamp.now + %(lease_seconds)s::float8,
                started_at = stamp.now, updated_at = stamp.now
            FROM stamp
            WHERE r.ctid = ANY(ARRAY(SELECT ctid FROM locked))
            RETURNING r.id, r.job, r.run_key, r.payload, r.attempt, r.max_attempts,
                      r.lease_token, r.checkpoint, r.priority, r.available_at
        ), logged AS (
            INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
            SELECT claimed.id, 'claimed', stamp.now, claimed.attempt, %(worker)s,
                   claimed.lease_token
            FROM claimed CROSS JOIN stamp
        ), charged AS (
            UPDATE {job_limits.name}
            SET tokens = %(tokens)s::float8 - (SELECT count(*) FROM claimed),
                refilled_at = %(now)s::float8
            WHERE job = %(job)s AND %(tokens)s::float8 IS NOT NULL
        )
        SELECT claimed.*, stamp.now, stamp.scanned, stamp.picked
        FROM stamp LEFT JOIN claimed ON true
        ORDER BY claimed.priority DESC, claimed.available_at, claimed.id
        """


def _succeed_statement(now: str, clock: str = "") -> str:
    """Successes of the runs of ``ids`` held under ``tokens``, logged: one statement.

    Fenced: only rows still running under the token the worker holds match.
    ``now``: the time of the successes; ``clock``: a table expression it
    reads. Each row: a run that succeeded, and its lease token. Run on
    psycopg's cursor (:func:`driver_rows`, :class:`CommittedStatements`).

    Each run is found by its primary key alone and locked (``held``), and
    the fence checked on the row as locked; the update then finds the runs
    by primary key. Joined with the runs instead, the planner may walk
    every running run once for each success: its statistics often say that
    none runs (the table was analysed while idle), so a nested loop over
    the running runs looks cheapest, and 1,000 successes with 3,000 runs
    running took 0.5 s instead of 0.02 (measured, generic plan).
    """
    clock_table, clock_from, clock_join = (
        (f"clock AS ({clock}), ", "FROM clock", ", clock") if clock else ("", "", "")
    )
    return f"""
    WITH {clock_table}held AS (
        SELECT run.id
        FROM unnest(%(ids)b::bigint[], %(tokens)b::bigint[]) AS lease(id, token)
        CROSS JOIN LATERAL (
            SELECT id, lease_token, status FROM {runs.name} WHERE id = lease.id
            LIMIT 1 FOR NO KEY UPDATE
        ) AS run
        WHERE run.lease_token = lease.token AND run.status = 'running'
    ), done AS (
        UPDATE {runs.name} AS r
        SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,
            last_error = NULL, finished_at = {now}, updated_at = {now}
        {clock_from}
        WHERE r.id = ANY(ARRAY(SELECT id FROM held))
        RETURNING r.id, r.attempt, r.lease_token
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
        SELECT id, 'succeeded', {now}, attempt, %(worker)s, lease_token FROM done{clock_join}
    )
    SELECT id, lease_token FROM done
"""


SUCCEED = _succeed_statement("%(now)s")

# Successes as one statement in autocommit, the clock read in it: one round
# trip where a transaction takes four (BEGIN, the clock, SUCCEED, COMMIT).
SUCCEED_COMMITTED = _succeed_statement("clock.now", _CLOCK)


# Outcomes of every kind, logged: one statement, for a batch that holds a
# retry, a failure or a death (successes alone take SUCCEED). Locked and
# fenced as _succeed_statement explains; each run's own values ride along
# (end_params), so the update joins the runs with ``held`` by primary key.
# Found by ``= ANY(ARRAY(...))`` as well, the runs were each compared with
# every outcome of the batch (measured, generic plan). Written one UPDATE per
# outcome instead, rejections ended at about 2,500 runs a second.
END = f"""
    WITH ending AS (
        SELECT * FROM unnest(
            %(ids)b::bigint[], %(tokens)b::bigint[], %(statuses)s::text[], %(kinds)s::text[],
            %(errors)s::text[], %(available)b::float8[], %(finished)b::float8[],
            %(details)s::text[]
        ) AS ending(id, token, status, kind, error, available_at, finished_at, detail)
    ), held AS MATERIALIZED (
        SELECT ending.*
        FROM ending
        CROSS JOIN LATERAL (
            SELECT lease_token, status FROM {runs.name} WHERE id = ending.id
            LIMIT 1 FOR NO KEY UPDATE
        ) AS run
        WHERE run.lease_token = ending.token AND run.status = 'running'
    ), done AS (
        UPDATE {runs.name} AS r
        SET status = held.status, last_error = held.error,
            available_at = coalesce(held.available_at, r.available_at),
            finished_at = coalesce(held.finished_at, r.finished_at),
            lease_owner = NULL, lease_expires_at = NULL, updated_at = %(now)s
        FROM held
        WHERE r.id = held.id
        RETURNING r.id, r.attempt, r.lease_token, held.kind, held.detail
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token, detail)
        SELECT id, kind, %(now)s, attempt, %(worker)s, lease_token, detail FROM done
    )
    SELECT id, lease_token FROM done
"""


def end_params(outcomes: Sequence[Outcome], now: float, worker_id: str) -> dict[str, Any]:
    """The parameters of :data:`END` for ``outcomes`` (in id order), ended at ``now``."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in ("ids", "tokens", "statuses", "kinds", "errors", "available", "finished")
    }
    details: list[str | None] = []
    for outcome in outcomes:
        values = end_values(outcome, now)
        logged = outcome_event(outcome, now, worker_id)
        columns["ids"].append(outcome.lease.run_id)
        columns["tokens"].append(outcome.lease.token)
        columns["statuses"].append(values["status"])
        columns["kinds"].append(logged["kind"])
        columns["errors"].append(values["error"])
        columns["available"].append(values["available_at"])
        columns["finished"].append(values["finished_at"])
        details.append(logged["detail"])
    return {**columns, "details": details, "now": now, "worker": worker_id}


# A job's own success inside its ctx.transaction(), once per run: the clock is
# read in the statement, and the statement runs on psycopg's cursor, so the
# success costs one round trip and none of SQLAlchemy's per-execution work.
SUCCEED_ONE = f"""
    WITH clock AS (
        SELECT extract(epoch from clock_timestamp())::float8 AS now
    ), done AS (
        UPDATE {runs.name} AS r
        SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,
            last_error = NULL, finished_at = clock.now, updated_at = clock.now
        FROM clock
        WHERE r.id = %(run_id)s AND r.lease_token = %(token)s AND r.status = 'running'
        RETURNING r.id, clock.now AS at
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
        SELECT id, 'succeeded', at, %(attempt)s, %(worker)s, %(token)s FROM done
    )
    SELECT id FROM done
"""


def driver_rows(
    conn: sa.Connection, statement: str, params: dict[str, Any]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` in ``conn``'s transaction on psycopg's cursor: its rows, as tuples.

    For the worker's hot paths, whose rows are many: prepared once per
    connection, fetched in one call, none of SQLAlchemy's work per row.
    Errors are raised as SQLAlchemy would raise them, so that a connection
    lost here is known for the store's failure.
    """
    driver = cast("psycopg.Connection[Any]", conn.connection.dbapi_connection)
    cursor = driver.cursor(binary=True)  # rows in binary: see CommittedStatements.rows
    try:
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchall()
    except psycopg.Error as exc:
        raise faults.driver_error(statement, exc, driver) from exc
    finally:
        cursor.close()


class CommittedStatements:
    """Connections in autocommit, one per thread of this process, for statements
    that commit on their own (:data:`CLAIM_COMMITTED`, :data:`SUCCEED_COMMITTED`).

    A worker's claim loop and its committer each get one, so neither waits for
    the other, nor for a pool's checkout and reset around each statement.
    Opened on first use; a connection that broke is dropped, and the thread's
    next statement opens another. Closed by :meth:`close` (the store's dispose).
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: dict[threading.Thread, psycopg.Connection[Any]] = {}
        self.pid = os.getpid()

    def rows(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``statement``, committed on return: its rows, as tuples.

        Errors are raised as SQLAlchemy would raise them (see :func:`driver_rows`).
        """
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
                self._keep(conn)
                self._local.conn = conn
            # Rows in binary: a claim's thousand rows load in a third of the
            # time they take as text (0.15 ms against 0.46, measured).
            with conn.cursor(binary=True) as cursor:
                cursor.execute(statement, params, prepare=True)
                return cursor.fetchall()
        except psycopg.Error as exc:
            if conn is not None and (conn.broken or conn.closed):
                self._drop(conn)
            raise faults.driver_error(statement, exc, conn) from exc

    def _keep(self, conn: psycopg.Connection[Any]) -> None:
        """Hold ``conn`` as this thread's, and close those of threads that ended: a
        process whose workers come and go (``app.work(until_idle=True)`` in a loop)
        keeps one connection per live thread, not one per thread it ever had."""
        with self._lock:
            ended = [thread for thread in self._opened if not thread.is_alive()]
            left = [self._opened.pop(thread) for thread in ended]
            self._opened[threading.current_thread()] = conn
        for old in left:
            old.close()

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._lock:
            if self._opened.get(threading.current_thread()) is conn:
                del self._opened[threading.current_thread()]
        conn.close()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, {}
        for conn in opened.values():
            conn.close()
