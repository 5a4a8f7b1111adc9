"""``ferryman work`` as a real process: signals and the process pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import ferryman as fm
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]


def start_worker(store_url: str, gate: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["FERRYMAN_TEST_GATE"] = str(gate)
    command = [sys.executable, "-m", "ferryman", "--app", "tests.worker_app:app"]
    return subprocess.Popen(
        [*command, "--store", store_url, "work", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_worker(worker: subprocess.Popen[str]) -> str:
    """SIGTERM, then the worker's stderr once it has exited cleanly."""
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    return stderr


def test_sigterm_finishes_running_jobs_within_grace(store_url: str, tmp_path: Path) -> None:
    from tests.worker_app import app

    app.use_store(store_url)
    try:
        (run_id,) = app.submit("hold", fm.RunRequest("quick")).run_ids
        worker = start_worker(store_url, tmp_path, "--concurrency", "1", "--grace", "30")
        wait_until(lambda: (tmp_path / "quick.started").exists(), what="the job to start")
        worker.send_signal(signal.SIGTERM)
        (tmp_path / "quick.go").touch()  # the job finishes inside the grace period
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
        run = app.get_run(run_id)
        assert run is not None and run.status is fm.RunStatus.SUCCEEDED
    finally:
        app.close()


def test_sigterm_releases_what_outlives_the_grace(store_url: str, tmp_path: Path) -> None:
    from tests.worker_app import app

    app.use_store(store_url)
    try:
        ids = app.submit("hold", fm.RunRequest("stuck"), fm.RunRequest("waiting")).run_ids
        worker = start_worker(
            store_url, tmp_path, "--concurrency", "1", "--prefetch", "1", "--grace", "0.5"
        )
        wait_until(lambda: (tmp_path / "stuck.started").exists(), what="the job to start")
        wait_until(
            lambda: all(r.status is fm.RunStatus.RUNNING for r in app.get_runs(job="hold")),
            what="both runs to be claimed",
        )
        stderr = stop_worker(worker)
        assert "2 released" in stderr
        for run_id in ids:
            run = app.get_run(run_id)
            assert run is not None
            assert (run.status, run.attempt) == (fm.RunStatus.QUEUED, 0)
            assert [e.kind.value for e in app.get_run_events(run_id)][-1] == "released"
    finally:
        app.close()


def test_long_runs_are_spread_evenly_over_workers_at_the_defaults(
    store_url: str, tmp_path: Path
) -> None:
    """8 long runs, 2 workers with no flags (4 job threads each): 4 runs each.

    A worker at the defaults claims no run ahead of its free threads before it
    knows how long runs take, so neither takes the other's share.
    """
    from tests.worker_app import app

    app.use_store(store_url)
    keys = [f"long-{i}" for i in range(8)]
    workers: list[subprocess.Popen[str]] = []
    try:
        app.submit("hold", *(fm.RunRequest(key) for key in keys))
        workers = [start_worker(store_url, tmp_path) for _ in range(2)]
        started = [tmp_path / f"{key}.started" for key in keys]
        wait_until(lambda: all(path.exists() for path in started), what="all 8 runs to start")
        pids = Counter(path.read_text() for path in started)
        assert sorted(pids.values()) == [4, 4], pids
        assert set(pids) == {str(worker.pid) for worker in workers}
        for key in keys:
            (tmp_path / f"{key}.go").touch()
        wait_until(
            lambda: all(r.status is fm.RunStatus.SUCCEEDED for r in app.get_runs(job="hold")),
            what="the 8 runs to succeed",
        )
    finally:
        for worker in workers:
            stop_worker(worker)
        app.close()


def test_process_pool_spreads_runs_over_processes(store_url: str, tmp_path: Path) -> None:
    """Two runs that last until the test lets them go, two processes of one job thread each.

    Each child claims no run ahead of its one thread, so the second run can
    only start in the other child: both must be seen running at once.
    """
    from tests.worker_app import app

    app.use_store(store_url)
    keys = ("left", "right")
    try:
        app.submit("hold", *(fm.RunRequest(key) for key in keys))
        worker = start_worker(
            store_url, tmp_path, "--processes", "2", "--concurrency", "1", "--until-idle"
        )
        started = [tmp_path / f"{key}.started" for key in keys]
        wait_until(lambda: all(path.exists() for path in started), what="both runs to start")
        pids = {path.read_text() for path in started}
        for key in keys:
            (tmp_path / f"{key}.go").touch()
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        assert "2 succeeded" in stderr
        assert len(pids) == 2, pids
        assert str(worker.pid) not in pids  # the supervisor only supervises
        runs = app.get_runs(job="hold")
        assert {r.status for r in runs} == {fm.RunStatus.SUCCEEDED}
        claimers = {
            e.worker_id for r in runs for e in app.get_run_events(r.id) if e.kind.value == "claimed"
        }
        assert {worker_id.split(":")[1] for worker_id in claimers} == pids
    finally:
        app.close()


def test_a_job_calling_sys_exit_fails_its_run_and_no_process_dies(
    store_url: str, tmp_path: Path
) -> None:
    from tests.worker_app import app

    app.use_store(store_url)
    (quit_id,) = app.submit("quits", fm.RunRequest("q")).run_ids
    app.submit("spin", *(fm.RunRequest(f"r{i}", {"rounds": 100}) for i in range(10)))
    worker = start_worker(store_url, tmp_path, "--processes", "2", "--concurrency", "1")
    try:

        def ended() -> fm.Run | None:
            run = app.get_run(quit_id)
            return run if run is not None and run.status.is_final else None

        run = wait_until(ended, what="the run calling sys.exit() to end")
        wait_until(
            lambda: all(r.status is fm.RunStatus.SUCCEEDED for r in app.get_runs(job="spin")),
            what="the other runs to succeed",
        )
        stderr = stop_worker(worker)
        assert (run.status, run.attempt) == (fm.RunStatus.DEAD, 2)
        assert "SystemExit: 3" in (run.last_error or "")
        # No child crashed, so the supervisor never had one to replace.
        assert "starting a replacement" not in stderr and "exited with" not in stderr
        assert [e.kind.value for e in app.get_run_events(quit_id)] == [
            *("requested", "claimed", "retry_scheduled", "claimed", "dead")
        ]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        app.close()


def test_a_child_ignoring_its_timeout_is_ended_and_replaced(store_url: str, tmp_path: Path) -> None:
    from tests.worker_app import app

    app.use_store(store_url)
    try:
        (stuck_id,) = app.submit("stubborn", fm.RunRequest("stuck")).run_ids
        worker = start_worker(
            store_url,
            tmp_path,
            *("--processes", "1", "--concurrency", "1", "--prefetch", "0"),
            *("--until-idle", "--grace", "1"),
        )
        (quick_id,) = app.submit("spin", fm.RunRequest("after", {"rounds": 10})).run_ids
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        stuck = app.get_run(stuck_id)
        assert stuck is not None and (stuck.status, stuck.attempt) == (
            fm.RunStatus.SUCCEEDED,
            2,
        )
        events = app.get_run_events(stuck_id)
        timed_out = [e for e in events if e.kind.value == "retry_scheduled"]
        assert len(timed_out) == 1 and "timed out after 0.5s" in timed_out[0].detail["error"]

        def pid(kind: str) -> str:
            worker_id = next(e.worker_id for e in events if e.kind.value == kind)
            assert worker_id is not None
            return worker_id.split(":")[1]

        # Its only job thread hung: the process that ran the retry is a new one.
        assert pid("claimed") != pid("succeeded")
        assert "replacing it" in stderr and "1 timed out" in stderr
        quick = app.get_run(quick_id)
        assert quick is not None and quick.status is fm.RunStatus.SUCCEEDED
    finally:
        app.close()
