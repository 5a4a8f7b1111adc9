"""Chaining under a crash storm: a downstream run exists iff its upstream succeeded, once.

Parents (``chain``) ask for one ``leaf`` run each with ``ctx.submit`` and
succeed either through ``ctx.transaction()`` or by returning (the worker's
committer writes the success). Three worker processes are SIGKILLed at random
while they work; kills land before, inside and after the commits that carry
the children. While the storm is cut off mid-flight, and again after a last
worker finished everything, the store must show: a leaf for every succeeded
parent and for no other, each requested once, linked both ways in the
processing log, every effect applied exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ferryman as fm
from tests.crash.storm import assert_each_effect_once, last_worker, seeded, storm
from tests.crash.support import status_counts, storm_setting
from tests.crash.worker_main import build_app, metadata

PARENTS = int(storm_setting("CHAIN_RUNS", 300))
WORKERS = 3
LEASE_SECONDS = 2.0
STORM_SECONDS = storm_setting("CHAIN_SECONDS", 40.0)  # at most; it ends after KILLS kills
KILLS = int(storm_setting("CHAIN_KILLS", 25))
KILL_INTERVAL = (0.3, 0.8)
WORK_MS = (10, 40)


def _snapshot(app: fm.App) -> tuple[dict[str, fm.Run], dict[str, fm.Run]]:
    """Parents and leaves by run_key, read in one transaction."""
    parents: dict[str, fm.Run] = {}
    leaves: dict[str, fm.Run] = {}
    with app.store.read("reading the chain") as conn:
        for run in app.store.runs.get_runs(conn, job="chain"):
            parents[run.run_key] = run
        for run in app.store.runs.get_runs(conn, job="leaf"):
            leaves[run.run_key] = run
    return parents, leaves


def _assert_iff(app: fm.App, context: str) -> int:
    """A leaf exists for every succeeded parent and for no other; the number of leaves."""
    parents, leaves = _snapshot(app)
    succeeded = {key for key, run in parents.items() if run.status is fm.RunStatus.SUCCEEDED}
    assert {key.removesuffix("/leaf") for key in leaves} == succeeded, context
    return len(leaves)


@pytest.mark.crash
@pytest.mark.timeout(300)
def test_chained_runs_exist_iff_the_parent_succeeded_across_kills(
    store_url: str, tmp_path: Path
) -> None:
    rng, context = seeded(tmp_path)
    app = build_app(store_url, lease_seconds=LEASE_SECONDS)
    try:
        metadata.create_all(app.engine)
        app.submit(
            "chain",
            *(
                fm.RunRequest(f"p-{i:04d}", {"transaction": i % 2 == 0, "work_ms": WORK_MS})
                for i in range(PARENTS)
            ),
        )
        # One job at a time per worker: the storm outlasts the work, so kills
        # keep landing on parents and leaves mid-flight.
        worker_args = ("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "1")
        worker_args += ("--prefetch", "0")
        with storm(app, store_url, tmp_path, *worker_args, workers=WORKERS) as workers:
            kills = workers.strike(
                rng,
                interval=KILL_INTERVAL,
                kills=KILLS,
                seconds=STORM_SECONDS,
                # Cut off while the last parents and leaves are still in flight.
                enough=workers.succeeded_at_least(2 * PARENTS * 9 // 10),
            )
        # Cut off mid-flight: the iff holds for what committed so far.
        in_flight_leaves = _assert_iff(app, context)

        final = last_worker(
            app,
            store_url,
            tmp_path,
            *("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "4"),
            lease_seconds=LEASE_SECONDS,
            timeout=180,
        )
        final.report()

        assert _assert_iff(app, context) == PARENTS
        assert status_counts(app) == {"succeeded": 2 * PARENTS}, context
        parents, leaves = _snapshot(app)
        expected = {key for key, run in parents.items() if run.payload["transaction"]}
        assert_each_effect_once(
            app, "chain", store_url, kills=kills, expected=expected | set(leaves), context=context
        )

        expiries = 0
        for key, parent in parents.items():
            leaf = leaves[f"{key}/leaf"]
            parent_events = app.get_run_events(parent.id)
            expiries += sum(e.kind is fm.RunEventKind.LEASE_EXPIRED for e in parent_events)
            submitted = [e for e in parent_events if e.kind is fm.RunEventKind.SUBMITTED]
            (success,) = (e for e in parent_events if e.kind is fm.RunEventKind.SUCCEEDED)
            assert len(submitted) == 1, (key, parent_events, context)
            assert submitted[0].detail["run_ids"] == [leaf.id]
            assert submitted[0].attempt == success.attempt
            requested = app.get_run_events(leaf.id)[0]
            assert requested.kind is fm.RunEventKind.REQUESTED
            assert requested.detail == {"parent_run_id": parent.id}

        # The storm did strike: kills landed on parents mid-work.
        assert kills >= 3 and expiries > 0, context
        print(
            f"{kills} kills, {expiries} parent leases expired, {in_flight_leaves} leaves when "
            f"the storm was cut ({context})"
        )
    finally:
        app.close()
