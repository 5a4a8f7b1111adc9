"""Many evaluators of one sensor: threads, and on PostgreSQL processes too.

Exactly one evaluation per state version counts; the others record a
``conflict`` and write nothing. The counter sensor's cursor is an integer and
each evaluation requests run ``n + 1``, so any lost or doubled commit shows
as a cursor that differs from the number of ``ok`` evaluations or a run key
out of place.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa

import ferryman as fm
from tests.sensor_apps import (
    assert_exactly_once,
    assert_history_consistent,
    counter_app,
    push_app,
)

REPO = Path(__file__).resolve().parents[2]


def start(mode: str, store_url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sensor_apps", mode, store_url, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def evaluators(app: fm.App, name: str) -> set[str]:
    with app.engine.begin() as conn:
        return set(
            conn.execute(
                sa.text("SELECT evaluator FROM ferryman_sensor_evaluations WHERE sensor = :s"),
                {"s": name},
            ).scalars()
        )


def assert_counter_consistent(app: fm.App) -> None:
    ok = assert_history_consistent(app, "counter", order=int)
    state = app.get_sensor("counter")
    assert state.cursor == str(len(ok))
    assert [e.cursor_after for e in ok] == [str(n) for n in range(1, len(ok) + 1)]
    runs = sorted(int(run.run_key) for run in app.get_runs(job="count"))
    assert runs == list(range(1, len(ok) + 1))
    assert all(e.runs_requested == 1 and e.runs_deduplicated == 0 for e in ok)
    failed = [e for e in app.get_evaluations("counter") if e.outcome == "failed"]
    assert failed == []


def hammer(app: fm.App, threads: int, keep_going: threading.Event | None, rounds: int) -> None:
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def evaluator() -> None:
        try:
            barrier.wait()
            done = 0
            while done < rounds or (keep_going is not None and keep_going.is_set()):
                app.tick(["counter"])
                done += 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=evaluator) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []


def test_four_threads_evaluating_one_sensor(store_url: str) -> None:
    app = counter_app(store_url)
    try:
        hammer(app, threads=4, keep_going=None, rounds=10)
        assert_counter_consistent(app)
        outcomes = {e.outcome.value for e in app.get_evaluations("counter")}
        assert "ok" in outcomes
    finally:
        app.close()


def test_four_threads_and_two_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    app = counter_app(pg_url)
    gate = tmp_path / "go"
    processes = [start("counter", pg_url, str(gate), "15") for _ in range(2)]
    running = threading.Event()
    running.set()
    try:

        def release_then_wait() -> None:
            gate.touch()
            for process in processes:
                process.wait(120)
            running.clear()

        waiter = threading.Thread(target=release_then_wait)
        waiter.start()
        hammer(app, threads=4, keep_going=running, rounds=5)
        waiter.join(120)
        for process in processes:
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0, stderr
        assert_counter_consistent(app)
        host = socket.gethostname()
        expected = {f"{host}:{pid}" for pid in (os.getpid(), *(p.pid for p in processes))}
        assert evaluators(app, "counter") == expected  # every process took part
    finally:
        for process in processes:
            process.kill() if process.poll() is None else None
        app.close()


def test_push_redelivery_from_two_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    app = push_app(pg_url)
    gate = tmp_path / "go"
    processes = [start("push", pg_url, str(gate)) for _ in range(2)]  # 2 threads each
    try:
        gate.touch()
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
        assert_exactly_once(app)
    finally:
        for process in processes:
            process.kill() if process.poll() is None else None
        app.close()
