"""The store away at start or for a while: daemons wait and resume, one-shot commands give up.

A private PostgreSQL cluster (tests/private_pg.py) plays the database that
comes up after the host's other services, or restarts; the shared server is
not touched.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import ferryman as fm
from ferryman.sensors.daemon import SensorDaemon
from ferryman.store import upgrade
from tests.helpers import wait_until
from tests.private_pg import PrivateCluster, private_postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    """A private cluster holding a migrated store, stopped."""
    with private_postgres() as pg:
        pg.start()
        upgrade(pg.url())
        pg.stop()
        yield pg


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["COLUMNS"] = "500"  # one error line stays one line
    return env


class Lines:
    """A process's stderr, read as it comes."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def join(self) -> None:
        self._thread.join(timeout=30)


def start(cluster: PrivateCluster, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "ferryman", "--app", "tests.cli_app:app"),
            *("--store", cluster.url(), *args),
        ],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    return process, Lines(process.stderr)


def test_work_and_run_wait_for_a_database_that_comes_up_later(cluster: PrivateCluster) -> None:
    worker, worker_log = start(cluster, "work", "--concurrency", "2")
    daemon, daemon_log = start(cluster, "run", "--no-serve", "--concurrency", "2")
    try:
        # Each try is one line, and the processes are still there, trying.
        wait_until(lambda: worker_log.count("store not reachable") >= 3, what="the worker's tries")
        wait_until(lambda: daemon_log.count("store not reachable") >= 3, what="the daemon's tries")
        assert worker.poll() is None and daemon.poll() is None
        assert all(
            "store not reachable (try" in line
            for line in worker_log.lines + daemon_log.lines
            if "ferryman.store" in line
        )

        cluster.start()
        app = fm.App(cluster.url())
        app.job(name="convert")(lambda ctx, payload: None)
        try:
            app.submit("convert", *(fm.RunRequest(f"doc-{i}", {"kind": "good"}) for i in range(20)))
            wait_until(
                lambda: len(app.get_runs(status="succeeded")) == 20,
                timeout=60,
                what="the runs to be processed",
            )
            wait_until(lambda: len(app.workers()) == 2, what="both to register")
        finally:
            app.close()
    finally:
        for process in (worker, daemon):
            process.send_signal(signal.SIGTERM)
        for process in (worker, daemon):
            process.wait(timeout=60)
        worker_log.join()
        daemon_log.join()
    assert worker.returncode == 0, worker_log.lines
    assert daemon.returncode == 0, daemon_log.lines
    assert not any("Traceback" in line for line in worker_log.lines + daemon_log.lines)


def test_a_one_shot_command_gives_up_after_its_connect_timeout(cluster: PrivateCluster) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            *(sys.executable, "-m", "ferryman", "--store", cluster.url()),
            *("--connect-timeout", "1", "status"),
        ],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: cannot reach store {cluster.url()}")
    assert "gave up after 1s" in lines[0]
    assert elapsed < 10  # the interpreter's start-up included


def test_the_sensor_loop_resumes_as_soon_as_the_store_is_back(
    cluster: PrivateCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.start()
    app = fm.App(cluster.url())

    @app.job
    def count(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="count", interval=0.1)
    def counter(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(str(n))], cursor=str(n))

    caplog.set_level(logging.INFO, logger="ferryman.sensors")
    loop = SensorDaemon(app._sensor_engine)
    loop.start()
    try:
        wait_until(lambda: app.get_sensor("counter").state_version >= 3, what="evaluations")
        cluster.stop()

        def store_failures() -> int:
            return sum(
                r.name == "ferryman.sensors" and "retrying in" in r.getMessage()
                for r in caplog.records
            )

        # By the sixth failure in a row the loop waits several seconds between tries.
        wait_until(lambda: store_failures() >= 6, timeout=60, what="the loop to back off")
        before = store_failures()
        cluster.start()
        back = time.monotonic()
        version = app.get_sensor("counter").state_version
        wait_until(
            lambda: app.get_sensor("counter").state_version > version,
            timeout=60,
            what="an evaluation after the store came back",
        )
        assert time.monotonic() - back < 5
        assert store_failures() - before <= 1  # at most the try on a stale connection
        assert any("the store answers again" in r.getMessage() for r in caplog.records)
    finally:
        loop.stop()
        assert loop.join(30)
        app.close()
    assert loop.crashes == 0
