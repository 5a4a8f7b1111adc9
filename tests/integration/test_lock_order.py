"""A worker's writers lock the runs they share in one order: by id.

A worker renews the leases it holds (the heartbeat) while its committer
writes the outcomes of runs that just ended; both name runs still held, on
two connections. On PostgreSQL and MariaDB a statement locks its rows in the
order it reaches them, so two statements over the same runs in opposite
orders deadlock, and the server rolls one back (a store failure the worker
retries after ``deadlock_timeout``, a stall of a second). Both writers name
their rows in ascending id order, whatever order the caller gave, so they
queue behind each other instead.

The first test gives the two writers the same held runs in opposite orders,
starts them at once, and asks that neither is refused, round after round:
whether their statements overlap is up to the machine. The second makes them
overlap on PostgreSQL: a third transaction holds the lowest run, the renewal
queues for it first and the finish after it, then the third lets go.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Store
from ferryman.store.run_rows import Lease, Outcome, OutcomeKind
from ferryman.store.schema import runs
from tests.conftest import STORE_FIXTURES
from tests.helpers import wait_until

HELD = 1_000
ROUNDS = 4
FAILED_EVERY = 10


def _held_leases(store: Store, job: str, count: int) -> list[tuple[Lease, int]]:
    claimed = store.claim(worker_id="w:1", jobs=[job], limit=count, lease_seconds=300)
    assert len(claimed) == count
    return [(run.lease, run.attempt) for run in claimed]


def _renew_and_finish_at_once(
    store: Store, renew_order: list[Lease], outcomes: list[Outcome]
) -> list[BaseException]:
    """Renew on a thread while this one finishes: what the store refused, if anything."""
    start = threading.Barrier(2)
    refused: list[BaseException] = []

    def renew() -> None:
        start.wait()
        try:
            store.renew(renew_order, 300)
        except fm.FerrymanError as exc:
            refused.append(exc)

    renewer = threading.Thread(target=renew)
    renewer.start()
    start.wait()
    try:
        assert store.finish(outcomes, worker_id="w:1") == [True] * len(outcomes)
    except fm.FerrymanError as exc:
        refused.append(exc)
    renewer.join()
    return refused


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store_name", ["postgres", "mariadb"])
def test_renewal_and_outcomes_over_the_same_runs_do_not_deadlock(
    store_name: str, request: pytest.FixtureRequest
) -> None:
    app = fm.App(request.getfixturevalue(STORE_FIXTURES[store_name]))

    @app.job
    def held(ctx: fm.JobContext, payload: object) -> None: ...

    try:
        for round_ in range(ROUNDS):
            app.submit("held", *(fm.RunRequest(f"r{round_}-{i}") for i in range(HELD)))
            leases = _held_leases(app.store, "held", HELD)
            # In the orders callers happen to hold them in: the heartbeat's
            # shuffled (more than one statement's worth), the committer's reversed.
            renew_order = [lease for lease, _ in leases]
            random.Random(round_).shuffle(renew_order)
            # Successes only (one statement on PostgreSQL), then, every other
            # round, one in FAILED_EVERY a failure: a batch of mixed outcomes is
            # written by more than one statement.
            outcomes = [
                Outcome(kind=OutcomeKind.FAILED, lease=lease, attempt=attempt, error="boom")
                if round_ % 2 and i % FAILED_EVERY == 0
                else Outcome(kind=OutcomeKind.SUCCEEDED, lease=lease, attempt=attempt)
                for i, (lease, attempt) in enumerate(reversed(leases))
            ]
            refused = _renew_and_finish_at_once(app.store, renew_order, outcomes)
            assert refused == [], f"round {round_}: {refused}"
        failed = len(range(0, HELD, FAILED_EVERY)) * (ROUNDS // 2)
        counts = {
            status: len(app.store.get_runs(job="held", status=status))
            for status in (fm.RunStatus.SUCCEEDED, fm.RunStatus.FAILED)
        }
        assert counts == {
            fm.RunStatus.SUCCEEDED: HELD * ROUNDS - failed,
            fm.RunStatus.FAILED: failed,
        }
    finally:
        app.close()


def _waiting_for_locks(engine: sa.Engine) -> int:
    """Transactions of the store's PostgreSQL database that wait for a lock, now."""
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar_one()
        )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("failures", [False, True], ids=["successes", "mixed"])
def test_a_finish_queued_behind_a_renewal_of_the_same_runs_waits_its_turn(
    pg_url: str, failures: bool
) -> None:
    """Both writers wait for the lowest run, the renewal first. Once it is let go,
    the renewal locks the runs upward; the finish, waiting for that same run, holds
    none of them. Had the finish named its runs in the order it was given
    (highest first), it would hold all but the lowest by then: a deadlock, and
    one of the two refused."""
    app = fm.App(pg_url)

    @app.job
    def held(ctx: fm.JobContext, payload: object) -> None: ...

    refused: list[BaseException] = []

    def attempt(write: Callable[[], object]) -> None:
        try:
            write()
        except fm.FerrymanError as exc:
            refused.append(exc)

    try:
        app.submit("held", *(fm.RunRequest(f"r-{i}") for i in range(200)))
        leases = _held_leases(app.store, "held", 200)
        renew_order = [lease for lease, _ in leases]
        random.Random(7).shuffle(renew_order)
        outcomes = [
            Outcome(kind=OutcomeKind.FAILED, lease=lease, attempt=attempt, error="boom")
            if failures and i % FAILED_EVERY == 0
            else Outcome(kind=OutcomeKind.SUCCEEDED, lease=lease, attempt=attempt)
            for i, (lease, attempt) in enumerate(reversed(leases))
        ]
        lowest = min(lease.run_id for lease, _ in leases)
        with app.engine.connect() as holder:
            holder.execute(sa.select(runs.c.id).where(runs.c.id == lowest).with_for_update())
            renewer = threading.Thread(
                target=attempt, args=(lambda: app.store.renew(renew_order, 300),)
            )
            renewer.start()
            wait_until(lambda: _waiting_for_locks(app.engine) == 1, what="the renewal waiting")
            finisher = threading.Thread(
                target=attempt, args=(lambda: app.store.finish(outcomes, worker_id="w:1"),)
            )
            finisher.start()
            wait_until(lambda: _waiting_for_locks(app.engine) == 2, what="the finish waiting")
            holder.rollback()
        renewer.join(60)
        finisher.join(60)
        assert refused == []
        failed = len(app.store.get_runs(job="held", status=fm.RunStatus.FAILED))
        assert failed == (len(range(0, 200, FAILED_EVERY)) if failures else 0)
        assert len(app.store.get_runs(job="held", status=fm.RunStatus.SUCCEEDED)) == 200 - failed
    finally:
        app.close()
