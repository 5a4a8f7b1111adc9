"""The statements of a worker's side of the queue on PostgreSQL: claim and finish.

Each is one statement (one round trip) that writes the runs and their
processing-log rows together (data-modifying CTEs), with batches as arrays.
They run on psycopg's cursor (:func:`driver_rows`): prepared once per
connection, their rows fetched as plain tuples in one call, none of
SQLAlchemy's work per row, which a worker paid for every run it claimed.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg
import sqlalchemy as sa

from ferryman.store import faults
from ferryman.store.schema import job_limits, run_events, runs


def _claim_statement(due: str) -> str:
    """Lease the runs the ``due`` query selects (locked), and log their claim: one statement.

    The update finds the runs by primary key (``= ANY(ARRAY(...))``): joined
    with ``FROM due`` instead, the planner hashes the whole runs table for
    every claim, a cost that grows with the table, not with the claim. Run on
    psycopg's cursor (:func:`driver_rows`): its rows come back as plain
    tuples, in the order of :data:`~ferryman.store.run_rows.CLAIMED_COLUMNS`.
    """
    return f"""
        WITH due AS ({due}
        ), claimed AS (
            UPDATE {runs.name} AS r
            SET status = 'running', attempt = r.attempt + 1, lease_owner = %(worker)s,
                lease_token = r.lease_token + 1, lease_expires_at = %(expires)s,
                started_at = %(now)s, updated_at = %(now)s
            WHERE r.id = ANY(ARRAY(SELECT id FROM due))
            RETURNING r.id, r.job, r.run_key, r.payload, r.attempt, r.max_attempts,
                      r.lease_token, r.checkpoint, r.priority, r.available_at
        ), logged AS (
            INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
            SELECT id, 'claimed', %(now)s, attempt, %(worker)s, lease_token FROM claimed
        )
        SELECT * FROM claimed ORDER BY priority DESC, available_at, id
        """


# The first due runs of the worker's jobs (higher priorities first, then the
# oldest), skipping rows another worker is locking right now; a run with a
# concurrency key is the limited path's (ferryman.store.limits). Each job's
# queue is walked in index order (LATERAL), so the plan stays a short index
# scan however many runs are due.
CLAIM_DUE = _claim_statement(
    f"""
            SELECT candidate.id
            FROM unnest(%(jobs)s::text[]) AS worker_job(job)
            CROSS JOIN LATERAL (
                SELECT id, priority, available_at FROM {runs.name}
                WHERE job = worker_job.job AND status = 'queued'
                      AND available_at <= %(now)s::float8
                      AND concurrency_digest IS NULL
                ORDER BY priority DESC, available_at, id
                LIMIT %(limit)s::bigint
                FOR UPDATE SKIP LOCKED
            ) AS candidate
            ORDER BY candidate.priority DESC, candidate.available_at, candidate.id
            LIMIT %(limit)s::bigint"""
)

# A limited claim's runs (ferryman.store.limits): those still queued and not
# locked elsewhere.
LEASE_QUEUED = _claim_statement(
    f"""
            SELECT id FROM {runs.name}
            WHERE id = ANY(%(ids)s::bigint[]) AND status = 'queued'
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


# Fenced: only rows still running under the token the worker holds match.
# Run on psycopg's cursor (driver_rows).
SUCCEED = f"""
    WITH done AS (
        UPDATE {runs.name} AS r
        SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,
            last_error = NULL, finished_at = %(now)s, updated_at = %(now)s
        FROM unnest(%(ids)s::bigint[], %(tokens)s::bigint[]) AS held(id, token)
        WHERE r.id = held.id AND r.lease_token = held.token AND r.status = 'running'
        RETURNING r.id, r.attempt, r.lease_token
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
        SELECT id, 'succeeded', %(now)s, attempt, %(worker)s, lease_token FROM done
    )
    SELECT id, lease_token FROM done
"""


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
    cursor = driver.cursor()
    try:
        cursor.execute(statement, params, prepare=True)
        return cursor.fetchall()
    except psycopg.Error as exc:
        raise faults.driver_error(statement, exc, driver) from exc
    finally:
        cursor.close()
