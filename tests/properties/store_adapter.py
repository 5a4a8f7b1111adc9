"""Everything the store's property tests need beyond ``Store``'s public methods.

The state machine drives the store as the worker does, through ``Store``'s
methods and the records of :mod:`ferryman.store` (``NewRun``, ``Lease``,
``Outcome``). Four things it needs are not methods of ``Store``: the
database's clock (leases are measured by it), the fenced success written
inside a caller's transaction (what ``ctx.transaction()`` does), a user
table for the effects such a transaction commits, and a jump of the clock
past a retry's backoff. They live here, so that a restructuring of the store
changes this file and no test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.store import ClaimedRun, Lease, NewRun, Outcome, OutcomeKind, Store
from ferryman.store.schema import runs
from tests.helpers import wait_until

__all__ = [
    "ClaimedRun",
    "Lease",
    "NewRun",
    "Outcome",
    "OutcomeKind",
    "Store",
    "create_effects_table",
    "database_now",
    "effect_rows",
    "enqueue_then_roll_back",
    "let_backoff_pass",
    "succeed_with_effect",
    "wait_for_clock_past",
]

# A user's table, written in the run's transaction. No unique key on purpose:
# a second committed success would show as a second row.
effects = sa.Table(
    "property_effects",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("run_key", sa.Text, nullable=False),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("lease_token", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
)


class RolledBack(Exception):
    """Raised inside a transaction to roll it back."""


def create_effects_table(store: Store) -> None:
    with store.engine.begin() as conn:
        effects.create(conn, checkfirst=True)


def effect_rows(store: Store, jobs: Sequence[str]) -> list[dict[str, Any]]:
    query = sa.select(effects).where(effects.c.job.in_(list(jobs))).order_by(effects.c.id)
    with store.read("reading effects") as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def database_now(store: Store) -> float:
    """The store's clock, the one every lease expiry is compared with."""
    with store.read("reading the clock") as conn:
        return store.runs.now(conn)


def wait_for_clock_past(store: Store, instant: float) -> float:
    """Wait until the database clock reads later than ``instant``; return that reading."""
    return wait_until(
        lambda: (now := database_now(store)) > instant and now,
        timeout=30,
        what=f"the database clock to pass {instant}",
    )


def succeed_with_effect(
    store: Store, lease: Lease, *, attempt: int, worker_id: str, effect: dict[str, Any]
) -> None:
    """What ``ctx.transaction()`` does: the job's effect and the fenced success, one commit.

    Raises :class:`~ferryman.LeaseLost` (and keeps nothing) if the lease is not current.
    """
    with store.transaction() as conn:
        conn.execute(effects.insert().values(**effect))
        store.succeed_within(conn, lease, attempt=attempt, worker_id=worker_id)


def let_backoff_pass(store: Store, run_id: int) -> None:
    """Jump the clock past a queued run's backoff: it is due from the database's now on.

    A simulated jump of the clock for this run alone, through SQL: waiting out
    a real backoff would make what a claim finds depend on the machine's
    speed, and hypothesis needs every example to replay the same.
    """
    with store.transaction() as conn:
        matched = conn.execute(
            runs.update()
            .where(runs.c.id == run_id, runs.c.status == "queued")
            .values(available_at=store.runs.now(conn))
        ).rowcount
    assert matched == 1, f"run {run_id} is not queued"


def enqueue_then_roll_back(store: Store, new_runs: Sequence[NewRun]) -> None:
    """Enqueue in a caller's transaction that then rolls back."""
    try:
        with store.transaction() as conn:
            store.enqueue(new_runs, conn=conn)
            raise RolledBack
    except RolledBack:
        pass
