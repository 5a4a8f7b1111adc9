"""The workers page: who is processing runs, and which runs each holds now.

A run's holder (``lease_owner``) is in no index, so the runs each worker
holds are found by reading the running runs oldest first, through the
``(status, id)`` index, up to :data:`HOLDING_COUNTED` of them. A real worker
holds its slots and a prefetch, so that is every running run; a store with
more running runs than that (a backlog claimed by workers since killed, a
huge prefetch) is not read whole on each look at the page: the holdings
are then lower bounds and say so (:attr:`WorkerView.holding_exact`), while
the oldest runs shown for each worker stay exact (the read is in id order).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import sqlalchemy as sa

from ferryman.model import Run, RunStatus, WorkerInfo
from ferryman.store import records
from ferryman.store.read_queries import MAX_PAGE, id_among
from ferryman.store.run_rows import status_is
from ferryman.store.schema import runs, workers

WORKER_RUNS_SHOWN = 20  # the oldest runs of each worker listed by id
# Running runs read for the holdings, at most: a store with more is not read
# whole on each look (at 10,000,000 runs, 100,000 running runs took 250 ms).
HOLDING_COUNTED = 1000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WorkerView:
    """A worker and the runs it holds now (the first few of them, and how many)."""

    worker: WorkerInfo
    running: list[Run]
    holding: int = 0
    # False: more runs are running than were read (HOLDING_COUNTED), and
    # ``holding`` counts this worker's among the oldest of them: at least that many.
    holding_exact: bool = True


def list_workers(
    conn: sa.Connection, at: float, *, alive_within: float, limit: int = 200
) -> list[WorkerView]:
    """Workers newest first: live ones, and the latest that stopped or went silent.

    Each with the number of runs it holds (see the module: exact unless more
    than :data:`HOLDING_COUNTED` runs are running) and the oldest
    :data:`WORKER_RUNS_SHOWN` of them: a worker may hold thousands.
    """
    rows = conn.execute(
        sa.select(workers).order_by(workers.c.started_at.desc()).limit(max(1, min(limit, MAX_PAGE)))
    ).mappings()
    found = [
        records.worker_from_row(
            row, alive=row["stopped_at"] is None and row["last_seen_at"] >= at - alive_within
        )
        for row in rows
    ]
    if not found:
        return []
    # Every running run, not those of the workers listed: with a filter on the
    # holder, PostgreSQL expects few rows and reads all of them to sort by id.
    held = conn.execute(
        sa.select(runs.c.id, runs.c.lease_owner)
        .where(status_is(RunStatus.RUNNING))
        .order_by(runs.c.id)
        .limit(HOLDING_COUNTED + 1)
    ).all()
    exact = len(held) <= HOLDING_COUNTED
    listed = {w.id for w in found}
    holding: dict[str, int] = defaultdict(int)
    oldest: dict[str, list[int]] = defaultdict(list)
    for run_id, owner in held[:HOLDING_COUNTED]:
        if owner not in listed:
            continue
        holding[owner] += 1
        if len(oldest[owner]) < WORKER_RUNS_SHOWN:
            oldest[owner].append(run_id)
    shown_ids = [run_id for ids in oldest.values() for run_id in ids]
    shown = sa.select(runs).where(
        id_among(conn, runs.c.id, shown_ids), runs.c.status == RunStatus.RUNNING.value
    )
    by_id = {
        (run := records.run_from_row(row)).id: run
        for row in (conn.execute(shown).mappings() if shown_ids else [])
    }
    return [
        WorkerView(
            worker=w,
            # A run that finished between the two reads is held no more.
            running=[by_id[i] for i in oldest.get(w.id, []) if i in by_id],
            holding=holding.get(w.id, 0),
            holding_exact=exact,
        )
        for w in found
    ]


def count_live_workers(conn: sa.Connection, at: float, *, alive_within: float) -> int:
    query = sa.select(sa.func.count()).where(
        workers.c.stopped_at.is_(None), workers.c.last_seen_at >= at - alive_within
    )
    return int(conn.execute(query).scalar_one())
