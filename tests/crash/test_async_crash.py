"""Async jobs under SIGKILL: processes running dozens of async runs each are killed at
random, and every run still succeeds exactly once, its effect written once.

Two worker processes (``tests.crash.async_worker_main``) work with
concurrency 40 on one event loop each; every 0.3-0.8 s one that holds runs is
killed with SIGKILL and replaced, so each kill abandons tens of runs at once
— mid-await, mid-checkpoint, mid-transaction. A last worker then picks up
what the dead ones left, and the whole store is checked.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import ferryman as fm
from tests.crash.async_worker_main import build_app
from tests.crash.storm import assert_each_effect_once, last_worker, seeded, storm
from tests.crash.support import processing_log, status_counts, storm_setting
from tests.crash.worker_main import metadata

RUNS = int(storm_setting("ASYNC_RUNS", 1200))
KILLS = int(storm_setting("ASYNC_KILLS", 6))
WORKERS = 2
LEASE_SECONDS = 2.0
WORK_MS = (30, 120)
# Kills cost attempts, never an error. With dozens of runs writing at once,
# MariaDB may still pick a deadlock victim now and then: its attempt is given
# back ("released", the store failed under it), checked below.
# Stored log rows: a submit stores none (its run's row says it was requested).
EXPECTED_KINDS = {"claimed", "checkpointed", "lease_expired", "succeeded"}
CONTENTION_KINDS = {"released"}
ASYNC_MAIN = "tests.crash.async_worker_main"


@pytest.mark.crash
@pytest.mark.timeout(240)
def test_killed_async_workers_lose_and_double_nothing(store_url: str, tmp_path: Path) -> None:
    rng, context = seeded(tmp_path)
    app = build_app(store_url, lease_seconds=LEASE_SECONDS)
    try:
        metadata.create_all(app.engine)
        app.submit(
            "async_storm",
            *(
                fm.RunRequest(f"run-{i:04d}", {"checkpoint": i % 2 == 0, "work_ms": WORK_MS})
                for i in range(RUNS)
            ),
        )
        args = ("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "40")
        with storm(app, store_url, tmp_path, *args, workers=WORKERS, main=ASYNC_MAIN) as workers:
            kills = workers.strike(
                rng,
                interval=(0.3, 0.8),
                kills=KILLS,
                enough=workers.succeeded_at_least(RUNS * 8 // 10),
            )
        final = last_worker(
            app,
            store_url,
            tmp_path,
            *args,
            lease_seconds=LEASE_SECONDS,
            timeout=120,
            main=ASYNC_MAIN,
        )
        report = final.report()
        assert (report["lease_lost"], report["errors"], report["dead"]) == (0, [], 0), context

        assert status_counts(app) == {"succeeded": RUNS}, context
        rows = assert_each_effect_once(
            app,
            "async",
            store_url,
            kills=kills,
            expected={f"run-{i:04d}" for i in range(RUNS)},
            context=context,
        )

        lease_expiries = 0
        runs = {run.run_key: run for run in app.get_runs(job="async_storm")}
        contended = 0
        for run_key, events in processing_log(app).items():
            kinds = Counter(event["kind"] for event in events)
            expected = EXPECTED_KINDS | (CONTENTION_KINDS if "mariadb" in store_url else set())
            assert set(kinds) <= expected, (run_key, events, context)
            if kinds["released"]:
                reasons = {
                    str(e.detail.get("reason"))
                    for e in app.get_run_events(runs[run_key].id)
                    if e.kind is fm.RunEventKind.RELEASED
                }
                assert all("deadlock" in reason.lower() for reason in reasons), (run_key, reasons)
                contended += kinds["released"]
            assert kinds["succeeded"] == 1, (run_key, events, context)
            lease_expiries += kinds["lease_expired"]
            # The effect is the succeeding attempt's, under the newest lease.
            (success,) = (event for event in events if event["kind"] == "succeeded")
            claims = [event for event in events if event["kind"] == "claimed"]
            effect = rows[run_key]
            assert (effect.attempt, effect.lease_token) == (
                success["attempt"],
                success["lease_token"],
            ), (run_key, events, context)
            assert success["lease_token"] == claims[-1]["lease_token"], (run_key, context)

        # The kills did strike runs in flight, several per kill.
        assert kills >= 3, context
        assert lease_expiries >= kills, context
        print(f"{kills} kills, {lease_expiries} leases expired, {contended} deadlock victims")
    finally:
        app.close()
