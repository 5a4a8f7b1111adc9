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

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.crash.support import (
    lease_holders,
    live_leases,
    report_storm,
    start_worker,
    status_counts,
    stop,
    storm_setting,
)
from tests.crash.worker_main import build_app, effects, metadata
from tests.helpers import wait_until

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
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = f"seed={seed}, worker logs in {tmp_path}"
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

        def start(slot: int) -> subprocess.Popen[bytes]:
            return start_worker(store_url, tmp_path / f"worker-{slot}.log", *worker_args)

        workers = [start(slot) for slot in range(WORKERS)]

        def busy() -> list[int]:
            holders = lease_holders(app)
            return [i for i, worker in enumerate(workers) if worker.pid in holders]

        kills = 0
        deadline = time.monotonic() + STORM_SECONDS
        try:
            while time.monotonic() < deadline and kills < KILLS:
                time.sleep(rng.uniform(*KILL_INTERVAL))  # the storm's rhythm, not a wait
                slot = rng.choice(wait_until(busy, timeout=60, what="a worker holding runs"))
                stop(workers[slot])
                kills += 1
                workers[slot] = start(slot)
                # Cut off while the last parents and leaves are still in flight.
                if status_counts(app).get("succeeded", 0) >= 2 * PARENTS * 9 // 10:
                    break
        finally:
            for worker in workers:
                stop(worker)
        # Cut off mid-flight: the iff holds for what committed so far.
        in_flight_leaves = _assert_iff(app, context)

        wait_until(lambda: live_leases(app) == 0, timeout=LEASE_SECONDS * 10, what="leases")
        final = start_worker(
            store_url,
            tmp_path / "final.log",
            *("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "4", "--until-idle"),
        )
        try:
            returncode = final.wait(timeout=180)
        finally:
            stop(final)
        assert returncode == 0, (tmp_path / "final.log").read_text()

        assert _assert_iff(app, context) == PARENTS
        assert status_counts(app) == {"succeeded": 2 * PARENTS}, context
        parents, leaves = _snapshot(app)
        with app.store.read("reading effects") as conn:
            per_key = Counter(conn.execute(sa.select(effects.c.run_key)).scalars())
        expected = {key for key, run in parents.items() if run.payload["transaction"]}
        expected |= set(leaves)
        report_storm(
            "chain",
            store_url,
            kills=kills,
            unit="runs",
            items=2 * PARENTS,
            lost=len(expected - set(per_key)),
            duplicated=sum(n - 1 for n in per_key.values()),
        )
        assert set(per_key) == expected and set(per_key.values()) == {1}, context

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
