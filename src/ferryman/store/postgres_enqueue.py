"""The PostgreSQL store's submit statements and their parameters.

Each is one statement that writes runs and sends their wake-ups: ``ENQUEUE``
inside a transaction of the caller's, the others (``ENQUEUE_ONE``,
``ENQUEUE_ALIKE``, ``ENQUEUE_MANY``) in autocommit on the submit connection
(:meth:`ferryman.store.postgres.PostgresBackend.enqueue_committed`), each in
two forms: with ``ON CONFLICT`` for keys that may exist, and a plain insert
(``*_NEW``) for keys taken to be new. :func:`submit_statements` picks the
form and builds its parameters for a batch of new runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import sqlalchemy as sa

from ferryman.store.postgres_connections import CHANNEL
from ferryman.store.run_rows import NewRun
from ferryman.store.schema import runs

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
SHARED_BY_ALIKE = attrgetter(
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
KEY_DIGEST_UNIQUE = next(
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


def one_run_params(new: NewRun) -> dict[str, Any]:
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


def alike_params(new_runs: Sequence[NewRun]) -> dict[str, Any]:
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


def array_params(new_runs: Sequence[NewRun]) -> dict[str, list[Any]]:
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


def submit_statements(new_runs: Sequence[NewRun]) -> tuple[str, str, dict[str, Any]]:
    """For runs of one key each: the statement for new keys, the one that deduplicates,
    and their parameters (one run; runs alike in all but key and payload; any runs)."""
    if len(new_runs) == 1:
        return ENQUEUE_ONE_NEW, ENQUEUE_ONE, one_run_params(new_runs[0])
    if len({SHARED_BY_ALIKE(new) for new in new_runs}) == 1:
        return ENQUEUE_ALIKE_NEW, ENQUEUE_ALIKE, alike_params(new_runs)
    return ENQUEUE_MANY_NEW, ENQUEUE_MANY, array_params(new_runs)
