"""What happens around the happy path: concurrent producers, dying processes, a lost database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import sqlalchemy as sa

import ferryman as fm
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]


def test_concurrent_producers_of_the_same_run_keys_make_one_run_each(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("load", fm.RunRequest("warm-up"))  # the store exists before the race
    keys = [f"file-{i}" for i in range(100)]
    results: list[fm.SubmitResult] = []
    start = threading.Barrier(8)

    def produce(offset: int) -> None:
        start.wait()
        rotated = keys[offset * 10 :] + keys[: offset * 10]
        results.append(app.submit("load", *(fm.RunRequest(k, {"by": offset}) for k in rotated)))

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(results) == 8
    assert sum(result.created for result in results) == 100
    assert sum(result.deduplicated for result in results) == 700
    runs = {run.run_key: run.id for run in app.get_runs() if run.run_key != "warm-up"}
    assert len(runs) == 100
    for offset, result in enumerate(sorted(results, key=lambda r: r.run_ids)):
        assert sorted(result.run_ids) == sorted(runs.values()), offset


def test_worker_survives_losing_its_postgres_connections(
    make_app: type[fm.App], pg_url: str
) -> None:
    app = make_app(pg_url)
    cut = threading.Event()

    @app.job(max_attempts=5, backoff=fm.Backoff(base=0))
    def load(ctx: fm.JobContext, payload: object) -> None:
        if ctx.run_key == "r-10" and not cut.is_set():
            cut.set()
            # Every other connection to the store dies, as in a failover.
            with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        with ctx.transaction() as conn:
            conn.execute(sa.text("INSERT INTO effects VALUES (:k)"), {"k": ctx.run_key})

    with app.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE effects (run_key TEXT NOT NULL)"))
    app.submit("load", *(fm.RunRequest(f"r-{i}") for i in range(40)))
    app.work(until_idle=True, handle_signals=False, concurrency=2, prefetch=2)

    assert cut.is_set()
    assert {run.status for run in app.get_runs()} == {fm.RunStatus.SUCCEEDED}
    with app.engine.begin() as conn:
        counts = conn.execute(
            sa.text("SELECT run_key, count(*) FROM effects GROUP BY run_key")
        ).all()
    assert len(counts) == 40
    assert {count for _, count in counts} == {1}


def test_supervisor_replaces_a_killed_worker_process(store_url: str, tmp_path: Path) -> None:
    from tests.worker_app import app

    app.use_store(store_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["FERRYMAN_TEST_GATE"] = str(tmp_path)
    supervisor = subprocess.Popen(
        [
            *(sys.executable, "-m", "ferryman", "--app", "tests.worker_app:app"),
            *("--store", store_url, "work", "--processes", "2", "--concurrency", "1"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = wait_until(lambda: live_pids(app) if len(live_pids(app)) == 2 else None)
        victim = sorted(first)[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: (pids := live_pids(app) - {victim}) and len(pids) == 2 and pids,
            what="a replacement worker process",
        )
        assert victim not in replaced
        assert len(replaced & first) == 1
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=60)
        assert supervisor.returncode == 0, stderr
        assert "starting a replacement" in stderr
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.communicate()
        app.close()


def live_pids(app: fm.App) -> set[int]:
    return {worker.pid for worker in app.workers()}
