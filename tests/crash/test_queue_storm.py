"""The queue's limits under SIGKILL storms and across processes.

* A storm: four worker processes on a job limited to a few runs at once and
  to one run per concurrency key (20 keys), SIGKILLed at random and replaced.
  The processing log, read as the slot each claim held until its run ended or
  was taken over, proves no two runs of one key overlapped and the job-wide
  limit was never exceeded; every run's effect landed exactly once.
* A rate: three worker processes share one job's rate limit; the claims they
  made, by the database's clock, keep to it.

``make soak`` runs the long versions (FERRYMAN_STORM_QUEUE_RUNS,
FERRYMAN_STORM_RATE_SECONDS).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ferryman as fm
from tests.crash.storm import assert_each_effect_once, seeded, storm
from tests.crash.support import live_leases, start_worker, status_counts, stop, storm_setting
from tests.crash.worker_main import KEYED_CONCURRENCY, build_app, metadata
from tests.helpers import wait_until
from tests.queue_support import (
    claim_times,
    held_slots,
    most_at_once,
    most_at_once_per_key,
    most_in_window,
)

RUNS = int(storm_setting("QUEUE_RUNS", 300))
KEYS = 20
WORKERS = 4
KILLS = int(storm_setting("QUEUE_KILLS", 10))
LEASE_SECONDS = 2.0
WORK_MS = (5, 30)
RATE = 20.0
RATE_SECONDS = storm_setting("RATE_SECONDS", 5.0)


@pytest.mark.crash
@pytest.mark.timeout(300 + RUNS / 5)
def test_keys_never_overlap_and_the_limit_holds_through_a_kill_storm(
    store_url: str, tmp_path: Path
) -> None:
    rng, context = seeded(tmp_path)
    app = build_app(store_url, lease_seconds=LEASE_SECONDS)
    worker_args = ("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "3")
    try:
        metadata.create_all(app.engine)
        keys = [f"run-{i:04d}" for i in range(RUNS)]
        app.submit(
            "keyed",
            *(
                fm.RunRequest(key, {"work_ms": WORK_MS}, concurrency_key=f"customer-{i % KEYS}")
                for i, key in enumerate(keys)
            ),
        )

        with storm(app, store_url, tmp_path, *worker_args, workers=WORKERS) as workers:
            kills = workers.strike(
                rng,
                interval=(0.2, 0.6),
                kills=KILLS,
                enough=workers.succeeded_at_least(RUNS * 9 // 10),
            )
            wait_until(
                lambda: status_counts(app) == {"succeeded": RUNS},
                timeout=120 + RUNS / 5,
                what="every run to succeed",
            )
        assert_each_effect_once(
            app, "queue limits", store_url, kills=kills, expected=keys, context=context
        )

        held = held_slots(app, "keyed")
        per_concurrency_key = most_at_once_per_key(held)
        assert set(per_concurrency_key) == {f"customer-{i}" for i in range(KEYS)}
        assert set(per_concurrency_key.values()) == {1}, context
        assert most_at_once(held) <= KEYED_CONCURRENCY, context
        assert kills >= min(KILLS, 5), context
        assert live_leases(app) == 0
    finally:
        app.close()


@pytest.mark.crash
@pytest.mark.timeout(120 + RATE_SECONDS * 2)
def test_three_processes_keep_to_the_rate_limit(store_url: str, tmp_path: Path) -> None:
    app = build_app(store_url, lease_seconds=30.0, rate=RATE)
    try:
        # More runs than the rate lets through in the time given.
        app.submit(
            "rated", *(fm.RunRequest(f"r-{i:05d}") for i in range(int(RATE * 4 * RATE_SECONDS)))
        )
        args = ("--rate", str(RATE), "--concurrency", "20", "--poll-interval", "0.05")
        workers = [
            start_worker(store_url, tmp_path / f"worker-{slot}.log", *args) for slot in range(3)
        ]
        try:
            first = wait_until(lambda: claim_times(app, "rated"), timeout=60, what="a claim")[0]
            wait_until(
                lambda: claim_times(app, "rated")[-1] > first + RATE_SECONDS + 1,
                timeout=60 + RATE_SECONDS * 2,
                what="the measured span",
            )
        finally:
            for worker in workers:
                stop(worker)
        times = claim_times(app, "rated")
        burst = fm.Rate(RATE, per=1.0).capacity
        # Past the first second (the full bucket's burst), the rate itself.
        start, end = first + 1.0, first + 1.0 + RATE_SECONDS
        measured = sum(start <= at < end for at in times) / RATE_SECONDS
        assert measured == pytest.approx(RATE, rel=0.10), times
        assert most_in_window(times, 1.0) <= RATE + burst, times
        workers_seen = {
            event.worker_id
            for run in app.get_runs(job="rated", status=fm.RunStatus.SUCCEEDED)
            for event in app.get_run_events(run.id)
            if event.kind == "claimed"
        }
        assert len(workers_seen) == 3  # the limit was shared, not one process's own
    finally:
        app.close()
