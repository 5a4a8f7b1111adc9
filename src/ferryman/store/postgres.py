"""PostgreSQL statements for the hot paths: enqueue, claim, complete.

Each is one statement (one round trip) where the portable code in
:mod:`ferryman.store.runs` needs two or three: data-modifying CTEs write the
runs and their processing-log rows together, and batches travel as arrays
(``unnest``), so a batch costs a handful of parameters instead of one per
value. They implement exactly the portable semantics; the contract tests run
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import sqlalchemy as sa

from ferryman.store import faults
from ferryman.store.schema import run_events, runs

# Unique by the key's digest (see ferryman.store.keys): a key of any length
# fits. Rows are inserted in the order given, which the caller sorted.
ENQUEUE = sa.text(
    f"""
    WITH inserted AS (
        INSERT INTO {runs.name} (job, run_key, key_digest, payload, status, attempt,
                                 max_attempts, available_at, lease_token, created_at,
                                 updated_at)
        SELECT job, run_key, key_digest, payload, 'queued', 0, max_attempts, :now, 0,
               :now, :now
        FROM unnest(CAST(:jobs AS text[]), CAST(:run_keys AS text[]),
                    CAST(:digests AS bytea[]), CAST(:payloads AS text[]),
                    CAST(:max_attempts AS integer[]))
             AS input(job, run_key, key_digest, payload, max_attempts)
        ON CONFLICT (key_digest) DO NOTHING
        RETURNING id, key_digest
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt)
        SELECT id, 'requested', :now, 0 FROM inserted
    )
    SELECT id, key_digest FROM inserted
    """
)

# The oldest due runs of the worker's jobs, skipping rows another worker is
# locking right now. Each job's queue is walked in index order (LATERAL), so
# the plan stays a short index scan however many runs are due.
CLAIM_DUE = sa.text(
    f"""
    WITH due AS (
        SELECT candidate.id
        FROM unnest(CAST(:jobs AS text[])) AS worker_job(job)
        CROSS JOIN LATERAL (
            SELECT id, available_at FROM {runs.name}
            WHERE job = worker_job.job AND status = 'queued' AND available_at <= :now
            ORDER BY available_at, id
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        ) AS candidate
        ORDER BY candidate.available_at, candidate.id
        LIMIT :limit
    ), claimed AS (
        UPDATE {runs.name} AS r
        SET status = 'running', attempt = r.attempt + 1, lease_owner = :worker,
            lease_token = r.lease_token + 1, lease_expires_at = :expires,
            started_at = :now, updated_at = :now
        FROM due WHERE r.id = due.id
        RETURNING r.id, r.job, r.run_key, r.payload, r.attempt, r.max_attempts,
                  r.lease_token, r.checkpoint, r.available_at
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
        SELECT id, 'claimed', :now, attempt, :worker, lease_token FROM claimed
    )
    SELECT * FROM claimed ORDER BY available_at, id
    """
)

# Fenced: only rows still running under the token the worker holds match.
SUCCEED = sa.text(
    f"""
    WITH done AS (
        UPDATE {runs.name} AS r
        SET status = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,
            last_error = NULL, finished_at = :now, updated_at = :now
        FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS bigint[])) AS held(id, token)
        WHERE r.id = held.id AND r.lease_token = held.token AND r.status = 'running'
        RETURNING r.id, r.attempt, r.lease_token
    ), logged AS (
        INSERT INTO {run_events.name} (run_id, kind, at, attempt, worker_id, lease_token)
        SELECT id, 'succeeded', :now, attempt, :worker, lease_token FROM done
    )
    SELECT id, lease_token FROM done
    """
)


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


def succeed_one(
    conn: sa.Connection, run_id: int, token: int, *, attempt: int, worker_id: str
) -> bool:
    """Record one run's success in the caller's transaction; False if the lease was lost."""
    driver = conn.connection.dbapi_connection
    cursor = driver.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            SUCCEED_ONE,
            {"run_id": run_id, "token": token, "attempt": attempt, "worker": worker_id},
        )
        return cursor.fetchone() is not None
    except psycopg.Error as exc:
        # Raised as SQLAlchemy would, so that a connection lost here is known
        # for the store's failure and not the job's.
        raise faults.driver_error(SUCCEED_ONE, exc, driver) from exc
    finally:
        cursor.close()


def enqueue(conn: sa.Connection, new_runs: Sequence[Any], now: float) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        ENQUEUE,
        {
            "jobs": [new.job for new in new_runs],
            "run_keys": [new.run_key for new in new_runs],
            "digests": [new.key_digest for new in new_runs],
            "payloads": [new.payload_json for new in new_runs],
            "max_attempts": [new.max_attempts for new in new_runs],
            "now": now,
        },
    )
    return [(row.id, bytes(row.key_digest)) for row in rows]


def claim_due(
    conn: sa.Connection,
    *,
    worker_id: str,
    jobs: Sequence[str],
    limit: int,
    now: float,
    lease_seconds: float,
) -> list[sa.Row[Any]]:
    return list(
        conn.execute(
            CLAIM_DUE,
            {
                "now": now,
                "jobs": list(jobs),
                "limit": limit,
                "worker": worker_id,
                "expires": now + lease_seconds,
            },
        )
    )


def succeed(
    conn: sa.Connection, leases: Sequence[tuple[int, int]], *, worker_id: str, now: float
) -> set[tuple[int, int]]:
    """Record the successes of the given ``(run_id, token)`` leases; return those accepted."""
    rows = conn.execute(
        SUCCEED,
        {
            "ids": [run_id for run_id, _ in leases],
            "tokens": [token for _, token in leases],
            "now": now,
            "worker": worker_id,
        },
    )
    return {(row.id, row.lease_token) for row in rows}
