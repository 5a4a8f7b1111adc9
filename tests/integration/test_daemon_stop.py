"""When the daemon says it stopped, it has: nothing it started is still running."""

from __future__ import annotations

import os
import signal
import threading

import ferryman as fm
from tests.helpers import wait_until


def test_nothing_of_the_daemon_runs_on_once_app_run_returns(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def count(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction():
            pass

    @app.poll_sensor(job="count", interval=0.05)  # a timeout: calls on threads of their own
    def counter(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(str(n))], cursor=str(n))

    before = set(threading.enumerate())

    def stop_when_busy() -> None:
        wait_until(lambda: len(app.get_runs(status="succeeded")) >= 10, what="runs to be done")
        os.kill(os.getpid(), signal.SIGTERM)  # app.run() handles it on the main thread

    stopper = threading.Thread(target=stop_when_busy, name="test-stopper", daemon=True)
    stopper.start()
    report = app.run(concurrency=2, grace_seconds=30)
    stopper.join(timeout=30)

    left = [t.name for t in set(threading.enumerate()) - before if t is not stopper]
    assert left == []
    assert report.succeeded >= 10
