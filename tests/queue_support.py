"""What the processing log says about the queue's controls: when each claim held a slot.

A claim holds its run's slot from its ``claimed`` event until the run's next
event ends it (succeeded, a retry, failed, dead, released) or another worker
takes the run over (``lease_expired``, written by the taker). Times are the
database's clock. A worker killed during a run stopped running it before its
lease expired, so this over-approximates what truly ran: if these intervals
never overlap, no two executions did.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import run_events, runs

ENDS = {"succeeded", "retry_scheduled", "failed", "dead", "released", "lease_expired"}


@dataclass(frozen=True, slots=True)
class Held:
    run_key: str
    concurrency_key: str | None
    start: float
    end: float  # math.inf while the run is still held


def held_slots(app: fm.App, job: str) -> list[Held]:
    """Every claim of ``job``'s runs, as the interval it held a slot."""
    query = (
        sa.select(
            runs.c.id, runs.c.run_key, runs.c.concurrency_key, run_events.c.kind, run_events.c.at
        )
        .join(runs, runs.c.id == run_events.c.run_id)
        .where(runs.c.job == job)
        .order_by(run_events.c.id)
    )
    open_claims: dict[int, tuple[str, str | None, float]] = {}
    held: list[Held] = []
    with app.store.read("reading the processing log") as conn:
        for row in conn.execute(query):
            if row.kind in ENDS and row.id in open_claims:
                key, concurrency_key, start = open_claims.pop(row.id)
                held.append(Held(key, concurrency_key, start, row.at))
            if row.kind == "claimed":
                open_claims[row.id] = (row.run_key, row.concurrency_key, row.at)
    held.extend(Held(k, c, start, math.inf) for k, c, start in open_claims.values())
    return held


def most_at_once(held: list[Held]) -> int:
    """The most intervals holding a slot at one instant (an end before a start at a tie)."""
    points = sorted([(h.start, 1) for h in held] + [(h.end, -1) for h in held])
    most = current = 0
    for _, step in points:
        current += step
        most = max(most, current)
    return most


def most_at_once_per_key(held: list[Held]) -> dict[str, int]:
    by_key: dict[str, list[Held]] = defaultdict(list)
    for h in held:
        if h.concurrency_key is not None:
            by_key[h.concurrency_key].append(h)
    return {key: most_at_once(intervals) for key, intervals in by_key.items()}


def claim_times(app: fm.App, job: str) -> list[float]:
    """When each claim of ``job``'s runs happened, by the database's clock, in order."""
    query = (
        sa.select(run_events.c.at)
        .join(runs, runs.c.id == run_events.c.run_id)
        .where(runs.c.job == job, run_events.c.kind == "claimed")
        .order_by(run_events.c.at)
    )
    with app.store.read("reading claims") as conn:
        return [float(at) for at in conn.execute(query).scalars()]


def most_in_window(times: list[float], window: float) -> int:
    """The most claims within any ``window`` seconds."""
    most = 0
    first = 0
    for last, at in enumerate(times):
        while times[first] <= at - window:
            first += 1
        most = max(most, last - first + 1)
    return most
