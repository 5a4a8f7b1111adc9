"""Crash storm: workers SIGKILLed at random while they work; every effect lands once.

Three worker processes run jobs that take a few milliseconds, checkpoint and
write their effect through ``ctx.transaction()``. Every 0.2-0.8 s one of them,
chosen at random, is killed with SIGKILL and replaced. Kills land in claims,
in jobs, in checkpoints and in commits. Afterwards a last worker picks up
what the dead ones left (the storm stops, killing every worker, while the
last tenth of the runs is still in flight), and the whole store is checked.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import ferryman as fm
from tests.crash.storm import assert_each_effect_once, last_worker, seeded, storm
from tests.crash.support import (
    count_lease_expiries,
    processing_log,
    small_storm,
    status_counts,
    storm_range,
    storm_setting,
)
from tests.crash.worker_main import build_app, metadata

# make soak sets FERRYMAN_STORM_RUNS, _SECONDS and _KILL_INTERVAL for longer storms.
# The suite's small storm (on MariaDB, see small_storm) ends once MIN_KILLS kills
# have struck and a run was taken over from a killed worker.
# Enough work to outlast MIN_KILLS kills (0.5 s apart on average) however
# quick the workers are: at 1,200 runs the work ran out after 4 to 9 kills at times.
RUNS = int(storm_setting("RUNS", 1600))
WORKERS = 3
LEASE_SECONDS = 2.0
STORM_SECONDS = storm_setting("SECONDS", 25.0)
KILL_INTERVAL = storm_range("KILL_INTERVAL", (0.2, 0.8))
TIMEOUT = 180 + (STORM_SECONDS - 25.0) + (RUNS - 1600) / 50  # what a longer storm adds
WORK_MS = (20, 60)
# The storm ends with every worker killed while the last runs are in flight.
STORM_UNTIL_SUCCEEDED = RUNS * 9 // 10
MIN_KILLS = 10
# Killing workers costs attempts, never an error: no retry, failure or death.
# Stored log rows: a submit stores none (its run's row says it was requested).
EXPECTED_KINDS = {"claimed", "checkpointed", "lease_expired", "succeeded"}


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_crash_storm_applies_every_effect_exactly_once(store_url: str, tmp_path: Path) -> None:
    small = small_storm(store_url)
    rng, context = seeded(tmp_path)
    app = build_app(store_url, lease_seconds=LEASE_SECONDS)
    try:
        metadata.create_all(app.engine)
        app.submit(
            "storm",
            *(
                fm.RunRequest(f"run-{i:04d}", {"checkpoint": i % 2 == 0, "work_ms": WORK_MS})
                for i in range(RUNS)
            ),
        )
        worker_args = ("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "3")
        worker_args += ("--prefetch", "1")

        # -- the storm: ended with every worker killed while the last runs are in flight
        with storm(app, store_url, tmp_path, *worker_args, workers=WORKERS) as workers:
            struck_enough = workers.succeeded_at_least(STORM_UNTIL_SUCCEEDED)
            kills = workers.strike(
                rng,
                interval=KILL_INTERVAL,
                seconds=STORM_SECONDS,
                # The small storm ends once it struck enough and a run was taken over.
                enough=lambda: (
                    struck_enough()
                    or (small and workers.kills >= MIN_KILLS and count_lease_expiries(app) > 0)
                ),
            )
        during_storm = status_counts(app)

        # -- recovery: a last worker takes over what the dead ones held ----------
        final = last_worker(
            app,
            store_url,
            tmp_path,
            *worker_args,
            lease_seconds=LEASE_SECONDS,
            timeout=max(60, RUNS / 20),
        )
        effect_rows = assert_each_effect_once(
            app,
            "workers",
            store_url,
            kills=kills,
            expected={f"run-{i:04d}" for i in range(RUNS)},
            context=context,
        )
        report = final.report()

        # -- the whole store -----------------------------------------------------
        assert status_counts(app) == {"succeeded": RUNS}, context
        left_over = RUNS - during_storm.get("succeeded", 0)
        assert (report["succeeded"], report["lease_lost"], report["errors"]) == (
            left_over,
            0,
            [],
        ), context

        runs = {run.run_key: run for run in app.get_runs(job="storm")}
        log = processing_log(app)
        assert set(log) == set(runs)
        lease_expiries = 0
        resumed = 0
        for run_key, events in log.items():
            kinds = Counter(event["kind"] for event in events)
            assert set(kinds) <= EXPECTED_KINDS, (run_key, events, context)
            assert kinds["succeeded"] == 1, (run_key, events, context)
            lease_expiries += kinds["lease_expired"]

            claims = [event for event in events if event["kind"] == "claimed"]
            tokens = [claim["lease_token"] for claim in claims]
            assert tokens == sorted(set(tokens)), (run_key, tokens, context)
            assert [claim["attempt"] for claim in claims] == list(range(1, len(claims) + 1))

            # The effect was written by the attempt the log says succeeded, and
            # that attempt held the newest lease on the run.
            (success,) = (event for event in events if event["kind"] == "succeeded")
            effect = effect_rows[run_key]
            assert (effect.worker_id, effect.attempt, effect.lease_token) == (
                success["worker_id"],
                success["attempt"],
                success["lease_token"],
            ), (run_key, events, context)
            assert (success["worker_id"], success["lease_token"]) == (
                claims[-1]["worker_id"],
                claims[-1]["lease_token"],
            )
            assert runs[run_key].attempt == success["attempt"]

            # A checkpoint survives the worker that wrote it.
            if runs[run_key].payload["checkpoint"]:
                assert runs[run_key].checkpoint == {
                    "attempt": effect.attempt,
                    "pid": effect.worker_pid,
                }
                if effect.resumed_from is not None:
                    resumed += 1
                    assert json.loads(effect.resumed_from)["attempt"] < effect.attempt

        # The storm did strike: killed workers held runs and others took them over.
        assert kills >= MIN_KILLS, context
        assert lease_expiries > 0, context
        assert left_over > 0, context
        print(
            f"{kills} kills, {lease_expiries} leases expired, {resumed} runs resumed from "
            f"a checkpoint, {left_over} runs left for the last worker ({context})"
        )
    finally:
        app.close()
