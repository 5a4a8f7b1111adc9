"""Supervised background threads: a crash is logged, counted, restarted where safe, and shown."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.sensors.daemon import SensorDaemon
from ferryman.supervise import CRASHES, supervised
from ferryman.web import WebSettings, create_app
from ferryman.worker.worker import Worker
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
QUICK = fm.Backoff(base=0.01, factor=2.0, max=0.05)


def test_a_crash_is_logged_with_its_traceback_and_restarted_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mark = CRASHES.mark()
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(f"crash number {len(calls)}")

    with caplog.at_level(logging.ERROR, logger="ferryman.supervise"):
        thread = supervised("test-flaky", flaky, restart=QUICK)
        assert thread.join(30)
    assert len(calls) == 3 and thread.crashes == 2
    assert str(thread.last_crash) == "crash number 2"
    crashes = [r for r in caplog.records if "test-flaky crashed" in r.getMessage()]
    assert len(crashes) == 2 and all(r.exc_info for r in crashes)  # tracebacks, both
    count, recent = CRASHES.since(mark)
    assert count == 2
    assert [str(c) for c in recent] == [
        "test-flaky: RuntimeError: crash number 1",
        "test-flaky: RuntimeError: crash number 2",
    ]


def test_without_restart_the_thread_ends_and_its_owner_is_told() -> None:
    told: list[BaseException] = []

    def broken() -> None:
        raise KeyError("gone")

    thread = supervised("test-broken", broken, on_crash=told.append)
    assert thread.join(30)
    assert thread.crashes == 1 and isinstance(told[0], KeyError)


def test_a_set_stop_event_ends_the_restarts() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        stop.set()
        raise RuntimeError("always")

    thread = supervised("test-stop", failing, restart=fm.Backoff(base=60.0), stop=stop)
    assert thread.join(30)  # no 60 s wait: the stop cut it short
    assert len(calls) == 1


def test_a_crash_of_the_sensor_loop_shows_in_status_report_and_dashboard(
    make_app: type[fm.App], store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(lease_seconds=0.6)  # heartbeats every 0.2 s write the crash count

    @app.job()
    def load(ctx: fm.JobContext, payload: object) -> None:
        pass

    @app.poll_sensor(job="load", interval=0)
    def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(cursor="1")

    engine = app._sensor_engine
    real = engine.poll_definitions
    crashed = threading.Event()

    def first_call_crashes() -> list[object]:
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("schedule unreadable")
        return list(real())

    monkeypatch.setattr(engine, "poll_definitions", first_call_crashes)
    loop = SensorDaemon(engine, idle_wait=0.05)
    worker = Worker(app.store, {"load": app.jobs["load"]}, lease_seconds=0.6)
    reports: list[fm.WorkReport] = []
    working = threading.Thread(target=lambda: reports.append(worker.run(handle_signals=False)))
    working.start()
    loop.start()
    try:
        (seen,) = wait_until(
            lambda: [w for w in app.workers() if w.id == worker.worker_id and w.crashes],
            what="the crash on the worker's row",
        )
        # ... and the loop was restarted: the sensor is evaluated after all.
        wait_until(lambda: app.get_evaluations("numbers"), what="an evaluation after the restart")
        status = subprocess.run(
            [sys.executable, "-m", "ferryman", "--store", store_url, "status"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")},
            timeout=120,
        )
    finally:
        loop.stop()
        assert loop.join(30)
        worker.stop()
        working.join(30)
    assert loop.crashes == 1
    assert seen.crashes == 1
    assert seen.last_crash == "ferryman-sensors: RuntimeError: schedule unreadable"
    assert reports[0].crashes == ["ferryman-sensors: RuntimeError: schedule unreadable"]
    assert status.returncode == 0, status.stderr
    assert "1 background crash, last: ferryman-sensors: RuntimeError: schedule" in status.stdout

    with TestClient(create_app(app, WebSettings(token="t" * 24))) as client:
        page = client.get("/workers").text
    assert "1: ferryman-sensors: RuntimeError: schedule unreadable" in page
