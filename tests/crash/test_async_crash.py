"""Async jobs under SIGKILL: processes running dozens of async runs each are killed at
random, and every run still succeeds exactly once, its effect written once.

Two worker processes (``tests.crash.async_worker_main``) work with
concurrency 40 on one event loop each; every 0.3-0.8 s one that holds runs is
killed with SIGKILL and replaced, so each kill abandons tens of runs at once
— mid-await, mid-checkpoint, mid-transaction. A last worker then picks up
what the dead ones left, and the whole store is checked.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.crash.async_worker_main import build_app
from tests.crash.support import (
    REPO,
    lease_holders,
    live_leases,
    processing_log,
    read_report,
    status_counts,
    stop,
    storm_setting,
)
from tests.crash.worker_main import effects, metadata
from tests.helpers import wait_until

RUNS = int(storm_setting("ASYNC_RUNS", 600))
KILLS = int(storm_setting("ASYNC_KILLS", 6))
WORKERS = 2
LEASE_SECONDS = 2.0
WORK_MS = (30, 120)
# Kills cost attempts, never an error. With dozens of runs writing at once,
# MariaDB also picks deadlock victims: a checkpoint's gives its attempt back
# ("released"), one inside the job's transaction is the job's error, retried
# ("retry_scheduled") — a deadlock and nothing else, checked below.
EXPECTED_KINDS = {"requested", "claimed", "checkpointed", "lease_expired", "succeeded"}
DEADLOCK_KINDS = {"released", "retry_scheduled"}
DEADLOCK = "RuntimeError: deadlock (MariaDB 1213) in the job's transaction"


def start(store_url: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.crash.async_worker_main", store_url, *args],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.crash
@pytest.mark.timeout(240)
def test_killed_async_workers_lose_and_double_nothing(store_url: str, tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = f"seed={seed}, worker logs in {tmp_path}"
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
        workers = [start(store_url, tmp_path / f"worker-{i}.log", *args) for i in range(WORKERS)]

        def busy() -> list[int]:
            holders = lease_holders(app)
            return [i for i, worker in enumerate(workers) if worker.pid in holders]

        kills = 0
        try:
            while kills < KILLS and status_counts(app).get("succeeded", 0) < RUNS * 8 // 10:
                time.sleep(rng.uniform(0.3, 0.8))  # the storm's rhythm, not a wait
                slot = rng.choice(wait_until(busy, timeout=60, what="a worker holding runs"))
                stop(workers[slot])
                kills += 1
                workers[slot] = start(store_url, tmp_path / f"worker-{slot}.log", *args)
        finally:
            for worker in workers:
                stop(worker)

        wait_until(
            lambda: live_leases(app) == 0,
            timeout=LEASE_SECONDS * 10,
            what="the killed workers' leases to expire",
        )
        report_path = tmp_path / "final-report.json"
        final = start(
            store_url, tmp_path / "final.log", *args, "--until-idle", "--report", str(report_path)
        )
        try:
            returncode = final.wait(timeout=120)
        finally:
            stop(final)
        assert returncode == 0, (tmp_path / "final.log").read_text()
        report = read_report(report_path)
        assert (report["lease_lost"], report["errors"], report["dead"]) == (0, [], 0), context

        assert status_counts(app) == {"succeeded": RUNS}, context
        with app.store.read("reading effects") as conn:
            rows = {row.run_key: row for row in conn.execute(sa.select(effects))}
            per_key = Counter(conn.execute(sa.select(effects.c.run_key)).scalars())
        duplicates = {key: n for key, n in per_key.items() if n != 1}
        assert duplicates == {}, f"effects applied more than once: {duplicates} ({context})"
        assert set(per_key) == {f"run-{i:04d}" for i in range(RUNS)}

        lease_expiries = 0
        runs = {run.run_key: run for run in app.get_runs(job="async_storm")}
        for run_key, events in processing_log(app).items():
            kinds = Counter(event["kind"] for event in events)
            expected = EXPECTED_KINDS | (DEADLOCK_KINDS if "mariadb" in store_url else set())
            assert set(kinds) <= expected, (run_key, events, context)
            if kinds["retry_scheduled"]:
                errors = [
                    str(e.detail.get("error"))
                    for e in app.get_run_events(runs[run_key].id)
                    if e.kind is fm.RunEventKind.RETRY_SCHEDULED
                ]
                assert set(errors) == {DEADLOCK}, (run_key, errors, context)
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
    finally:
        app.close()
