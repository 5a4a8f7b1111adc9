"""Which run keys already have a run: the store's ``ferryman_runs`` read as a processing log.

``mode="missing"`` of :func:`ferryman.sensors.sql_table` needs one question
answered by the store — "which of these ``(job, run_key)`` pairs exist?" — and
one table expression for its anti-join. Both are read-only and go through the
store schema's table definition, so they follow the store's migrations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from ferryman.store.schema import runs

LOOKUP_CHUNK = 500


def runs_table() -> sa.Table:
    """The store's runs table, for an anti-join in the store's own database."""
    return runs


def existing_run_keys(
    conn: sa.Connection, run_keys_by_job: Mapping[str, Sequence[str]]
) -> set[tuple[str, str]]:
    """The ``(job, run_key)`` pairs among ``run_keys_by_job`` that have a run in the store.

    Served by the unique index on ``(job, run_key)``; at most ``LOOKUP_CHUNK``
    keys per query.
    """
    found: set[tuple[str, str]] = set()
    for job, keys in run_keys_by_job.items():
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = list(keys[start : start + LOOKUP_CHUNK])
            query = sa.select(runs.c.job, runs.c.run_key).where(
                runs.c.job == job, runs.c.run_key.in_(chunk)
            )
            found.update((row.job, row.run_key) for row in conn.execute(query))
    return found
