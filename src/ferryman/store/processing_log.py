"""Which run keys already have a run: the store's ``ferryman_runs`` read as a processing log.

``mode="missing"`` of :func:`ferryman.sensors.sql_table` needs one question
answered by the store — "which of these ``(job, run_key)`` pairs exist?"
(:meth:`~ferryman.store.Store.existing_run_keys`) — and, when its table lives
in the store's database, one condition for its anti-join (:func:`no_run`).
Both are read-only and built from the store schema's table definition, so
they follow the store's migrations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.store.keys import run_key_digest
from ferryman.store.run_key_sql import SameRunKey
from ferryman.store.schema import runs

LOOKUP_CHUNK = 500


def no_run(job: str, run_key: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """True where ``job`` has no run keyed ``run_key``: an anti-join on the store's runs,
    for a query on a table in the store's own database."""
    return ~sa.exists().where(runs.c.job == job, SameRunKey(runs.c.run_key, run_key))


def existing_run_keys(
    conn: sa.Connection, run_keys_by_job: Mapping[str, Sequence[str]]
) -> set[tuple[str, str]]:
    """The ``(job, run_key)`` pairs among ``run_keys_by_job`` that have a run in the store.

    Served by the unique index on the keys' digests; at most ``LOOKUP_CHUNK``
    keys per query.
    """
    by_digest = {
        run_key_digest(job, key): (job, key)
        for job, keys in run_keys_by_job.items()
        for key in keys
    }
    digests = list(by_digest)
    found: set[tuple[str, str]] = set()
    for start in range(0, len(digests), LOOKUP_CHUNK):
        query = sa.select(runs.c.key_digest).where(
            runs.c.key_digest.in_(digests[start : start + LOOKUP_CHUNK])
        )
        found.update(by_digest[bytes(digest)] for digest in conn.execute(query).scalars())
    return found
