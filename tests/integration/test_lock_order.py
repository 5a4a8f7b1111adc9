"""A worker's writers lock the runs they share in one order: by id.

A worker renews the leases it holds (the heartbeat) while its committer
writes the outcomes of runs that just ended; both name runs still held, on
two connections. On PostgreSQL and MariaDB a statement locks its rows in the
order it reaches them, so two statements over the same runs in opposite
orders deadlock, and the server rolls one back (a store failure the worker
retries after ``deadlock_timeout``, a stall of a second). Both writers name
their rows in ascending id order, whatever order the caller gave, so they
queue behind each other instead.

The test gives the two writers the same held runs in opposite orders, starts
them at once, and asks that neither is refused, round after round.
"""

from __future__ import annotations

import random
import threading

import pytest

import ferryman as fm
from ferryman.store import Store
from ferryman.store.run_rows import Lease, Outcome, OutcomeKind
from tests.conftest import STORE_FIXTURES

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
