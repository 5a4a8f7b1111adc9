"""The XML reference pipeline under fire: 2,000 applications, workers SIGKILLed at random.

Three ``ferryman work`` instances of ``examples/xml_to_tables`` load staged
applications (5 % of them broken) while one of them, picked at random among
those holding runs, is SIGKILLed and restarted every 0.2-0.7 s. When the storm
ends a last instance finishes what the dead ones held. Then the whole store is
checked: each good application's rows exist exactly once in every table and
equal a reference mapping done in this process; each bad one is ``failed``
with a reason naming it; nothing is queued or running; and the processing log
shows, per application, claims that never overlap, ending in one success or
one rejection by the holder of the last claim.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from examples.xml_to_tables.stage import stage
from examples.xml_to_tables.verify import verify

import ferryman as fm
from tests.crash.support import (
    count_lease_expiries,
    lease_holders,
    live_leases,
    processing_log,
    report_storm,
    small_storm,
    status_counts,
    stop,
    storm_setting,
    storm_size,
)
from tests.helpers import wait_until
from tests.xml_support import (
    reference_rows,
    run_ferryman,
    start_ferryman,
    stored_rows,
)

# make soak sets FERRYMAN_STORM_APPS and _SECONDS for longer storms. The suite's
# small storm (on MariaDB, see small_storm) has fewer applications and ends once
# MIN_KILLS kills have struck and a run was taken over from a killed worker.
FULL_APPS, SMALL_APPS = 4000, 1000  # full: enough that MIN_KILLS strike before most are done
BAD_SHARE = 0.05
WORKERS = 3
LEASE_SECONDS = 2.0
STORM_SECONDS = storm_setting("SECONDS", 40.0)
TIMEOUT = 240 + (STORM_SECONDS - 40.0) * 1.5  # what a longer storm adds
KILL_INTERVAL = (0.2, 0.7)
MIN_KILLS = 10
# Stored log rows: a submit stores none (its run's row says it was requested).
EXPECTED_KINDS = {"claimed", "lease_expired", "succeeded", "failed"}


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_xml_pipeline_loads_each_application_once_through_a_kill_storm(
    store_url: str, tmp_path: Path
) -> None:
    apps = int(storm_size("APPS", store_url, full=FULL_APPS, small=SMALL_APPS))
    small = small_storm(store_url)
    storm_until_done = apps * 9 // 10
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    context = f"seed={seed}, worker logs in {tmp_path}"
    app = fm.App(store_url, lease_seconds=LEASE_SECONDS)
    try:
        staged = stage(app.engine, apps, bad_share=BAD_SHARE, seed=seed)
        bad = {a.app_id: a.defect for a in staged if a.defect}
        assert 0 < len(bad) < apps // 10, context
        ticked = run_ferryman(store_url, "tick")
        assert ticked.returncode == 0, ticked.stderr
        assert status_counts(app) == {"queued": apps}

        worker_args = ("work", "--concurrency", "1", "--prefetch", "1", "--no-progress")

        def start(slot: int) -> subprocess.Popen[bytes]:
            log = tmp_path / f"worker-{slot}.log"
            return start_ferryman(store_url, log, *worker_args, lease_seconds=LEASE_SECONDS)

        # -- the storm ---------------------------------------------------------
        workers = [start(slot) for slot in range(WORKERS)]
        kills = 0
        deadline = time.monotonic() + STORM_SECONDS
        try:
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(*KILL_INTERVAL))  # the storm's rhythm, not a wait
                holders = lease_holders(app)
                busy = [i for i, w in enumerate(workers) if w.pid in holders]
                slot = rng.choice(busy) if busy else rng.randrange(WORKERS)
                stop(workers[slot])
                kills += 1
                workers[slot] = start(slot)
                counts = status_counts(app)
                if counts.get("succeeded", 0) + counts.get("failed", 0) >= storm_until_done:
                    break
                if small and kills >= MIN_KILLS and count_lease_expiries(app) > 0:
                    break
        finally:
            for worker in workers:
                stop(worker)

        # -- recovery: one more instance finishes what the dead ones held ------
        wait_until(
            lambda: live_leases(app) == 0,
            timeout=LEASE_SECONDS * 10,
            what="the killed workers' leases to expire",
        )
        final = run_ferryman(
            store_url, *worker_args, "--until-idle", lease_seconds=LEASE_SECONDS, timeout=120
        )
        expected = reference_rows(staged)
        stored = stored_rows(app)
        finished = status_counts(app)
        report_storm(
            "xml pipeline",
            store_url,
            kills=kills,
            unit="applications",
            items=apps,
            lost=apps
            - finished.get("succeeded", 0)
            - finished.get("failed", 0)
            + sum(len(expected[table] - set(rows)) for table, rows in stored.items()),
            duplicated=sum(len(rows) - len(set(rows)) for rows in stored.values()),
        )
        assert final.returncode == 0, final.stderr[-3000:]

        # -- the whole store -----------------------------------------------------
        assert finished == {"succeeded": apps - len(bad), "failed": len(bad)}, context
        assert set(verify(app.engine).values()) == {0}, context

        for table, rows in stored.items():
            assert len(rows) == len(set(rows)), f"{table}: duplicate rows ({context})"
            assert set(rows) == expected[table], f"{table} differs from the reference ({context})"

        runs = {int(run.run_key.split(":")[1]): run for run in app.get_runs()}
        for app_id, defect in bad.items():
            run = runs[app_id]
            assert run.status == fm.RunStatus.FAILED, (app_id, defect, context)
            assert run.last_error is not None
            assert run.last_error.startswith(f"app {app_id}: "), (run.last_error, defect)
            assert "line " in run.last_error, (run.last_error, defect)

        log = processing_log(app)
        lease_expiries = 0
        for run_key, events in log.items():
            app_id = int(run_key.split(":")[1])
            kinds = Counter(event["kind"] for event in events)
            assert set(kinds) <= EXPECTED_KINDS, (run_key, events, context)
            terminal = "failed" if app_id in bad else "succeeded"
            assert kinds[terminal] == 1, (run_key, events, context)
            assert kinds["succeeded"] + kinds["failed"] == 1, (run_key, events, context)
            lease_expiries += kinds["lease_expired"]

            # Claims never overlap: each later claim follows the expiry of the one before.
            claims = [e for e in events if e["kind"] == "claimed"]
            assert all(claim["worker_id"] for claim in claims), (run_key, events)
            for earlier, later in itertools.pairwise(claims):
                between = events[events.index(earlier) + 1 : events.index(later)]
                assert [e["kind"] for e in between] == ["lease_expired"], (run_key, events)
                assert later["lease_token"] > earlier["lease_token"], (run_key, events)
            (outcome,) = (e for e in events if e["kind"] == terminal)
            assert events[-1] == outcome, (run_key, events)
            assert (outcome["worker_id"], outcome["lease_token"]) == (
                claims[-1]["worker_id"],
                claims[-1]["lease_token"],
            ), (run_key, events, context)

        assert kills >= MIN_KILLS, context
        assert lease_expiries > 0, context
        print(f"{kills} kills, {lease_expiries} leases expired ({context})")
    finally:
        app.close()
