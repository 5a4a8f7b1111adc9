"""A batch of new runs as the few parameters of one SQLite statement.

Bound row by row (``executemany``), a batch of 1,000 runs costs SQLite a
statement step and the driver fourteen conversions per run, all while the
store's single write lock is held. Carried as one JSON array instead, read
by ``json_each`` in an ``INSERT ... SELECT``, it is one statement (the measured
saving: about 4 us of SQLite and driver time per run, of 10):

* the texts and integers of each run travel in the array (see COLUMN_SQL):
  JSON holds them exactly (a key that cannot be stored exactly, NUL or a lone
  surrogate, was refused when the run was built; a job name with a NUL falls
  back, see below);
* the digests travel as blobs of 32 bytes per run, cut out by the run's
  position in the array (JSON has no bytes);
* the times are the statement's own parameters: every run of such a batch is
  due at the database's clock, read once for the batch.

A run with a time of its own (a delay, ``not_before``) is not carried this
way: SQLite's reading of a decimal number is not guaranteed to give back the
exact double that was written, and every value must be stored as given. Such
a batch is bound row by row, as is a batch of a job whose name holds a NUL
(SQLite's JSON strings end there).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ferryman.store.run_rows import QUEUED, RUN_ROW_COLUMNS, NewRun

DIGEST_BYTES = 32
# Where each column of a run's row comes from, as SQL over ``json_each`` (aliased
# ``batch``): the array's fields, the digests' blobs, or the statement's parameters.
# A run is ``[run_key, payload, job, max_attempts, priority, concurrency_key]``, or
# just ``[run_key, payload]`` when the batch's runs share the rest (the common
# batch: one job, no concurrency keys), given once as ``:job``, ``:max_attempts``
# and ``:priority``. SQLite reads a run's array once per field it takes from it.
_FIELD = "json_extract(batch.value, '$[{}]')"
_CONCURRENCY_KEY = _FIELD.format(5)
COLUMN_SQL = {
    "job": f"coalesce(:job, {_FIELD.format(2)})",
    "run_key": _FIELD.format(0),
    "key_digest": f"substr(:key_digests, {DIGEST_BYTES} * batch.key + 1, {DIGEST_BYTES})",
    "payload": _FIELD.format(1),
    "status": ":status",
    "attempt": "0",
    "max_attempts": f"coalesce(:max_attempts, {_FIELD.format(3)})",
    "available_at": ":now",
    "priority": f"coalesce(:priority, {_FIELD.format(4)})",
    "concurrency_key": f"CASE WHEN :keyed THEN {_CONCURRENCY_KEY} END",
    "concurrency_digest": f"CASE WHEN :keyed AND {_CONCURRENCY_KEY} IS NOT NULL THEN "
    f"substr(:concurrency_digests, {DIGEST_BYTES} * batch.key + 1, {DIGEST_BYTES}) END",
    "lease_token": "0",
    "created_at": ":now",
    "updated_at": ":now",
}
# In place of the VALUES of the row-by-row insert, in the order of its columns.
SELECT_BATCH = (
    f"SELECT {', '.join(COLUMN_SQL[name] for name in RUN_ROW_COLUMNS)} "
    "FROM json_each(:runs) AS batch WHERE true ORDER BY batch.key "
)
# Texts as they are (not \u escapes): fewer bytes for SQLite to read back.
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"))
_NO_DIGEST = bytes(DIGEST_BYTES)


def batch_params(new_runs: Sequence[NewRun], now: float) -> dict[str, Any] | None:
    """The parameters that insert ``new_runs`` due at ``now``; None if one of them
    cannot travel in JSON exactly (see the module's docstring)."""
    first = new_runs[0]
    job, max_attempts, priority = first.job, first.max_attempts, first.priority
    shared, keyed = True, False
    for new in new_runs:
        if new.delay or new.not_before is not None:
            return None
        keyed = keyed or new.concurrency_key is not None
        shared = shared and (
            new.job == job and new.max_attempts == max_attempts and new.priority == priority
        )
    params: dict[str, Any] = {
        "key_digests": b"".join(new.key_digest for new in new_runs),
        "status": QUEUED,
        "now": now,
        "keyed": keyed,
        "concurrency_digests": b"",
    }
    if shared and not keyed:
        if "\x00" in job:
            return None
        rows: list[tuple[Any, ...]] = [(new.run_key, new.payload_json) for new in new_runs]
        params.update(job=job, max_attempts=max_attempts, priority=priority)
    else:
        if any("\x00" in job for job in {new.job for new in new_runs}):
            return None
        rows = [
            (
                new.run_key,
                new.payload_json,
                new.job,
                new.max_attempts,
                new.priority,
                new.concurrency_key,
            )
            for new in new_runs
        ]
        params.update(job=None, max_attempts=None, priority=None)
    if keyed:
        digests = (new.concurrency_digest or _NO_DIGEST for new in new_runs)
        params["concurrency_digests"] = b"".join(digests)
    params["runs"] = _ENCODER.encode(rows)
    return params
