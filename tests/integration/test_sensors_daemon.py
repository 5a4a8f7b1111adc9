"""``app.run()`` as a real process: the sensor loop beside a worker, timeouts, SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import ferryman as fm
from ferryman.sensors.daemon import SensorDaemon
from tests.helpers import wait_until
from tests.integration.test_sensors_concurrency import start
from tests.sensor_apps import assert_history_consistent


def outcomes(app: fm.App, name: str, outcome: str) -> list[fm.Evaluation]:
    return [e for e in app.get_evaluations(name) if e.outcome == outcome]


def test_hung_sensor_times_out_while_the_others_go_on(store_url: str, tmp_path: Path) -> None:
    daemon = start("daemon", store_url, str(tmp_path))
    app = fm.App(store_url)
    try:
        wait_until(lambda: (tmp_path / "hung.started").exists(), what="the hung evaluation")
        (timed_out,) = wait_until(
            lambda: outcomes(app, "hung", "failed"), what="the hung evaluation to time out"
        )
        assert "did not return within its timeout of 0.5s" in (timed_out.error or "")
        # While that evaluation is still stuck, the other sensor keeps being evaluated,
        # and the hung one is evaluated again once its backoff is over.
        wait_until(lambda: len(outcomes(app, "fast", "ok")) >= 5, what="the fast sensor")
        wait_until(lambda: outcomes(app, "hung", "ok"), what="the hung sensor's next evaluation")
        assert not (tmp_path / "hung.returned").exists()

        (tmp_path / "hung.go").touch()  # the stuck call returns now, far too late
        wait_until(lambda: (tmp_path / "hung.returned").exists(), what="the late return")
        # The worker in the same process runs what the sensors requested.
        wait_until(
            lambda: app.get_runs(job="noop", status="succeeded"), what="a run to be executed"
        )
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, stderr
        assert "did not return within its timeout" in stderr  # logged with the sensor's name
        assert "Traceback" not in stderr

        assert "late" not in {run.run_key for run in app.get_runs()}
        assert app.get_sensor("hung").cursor == "on-time"
        assert "late" not in {e.cursor_after for e in app.get_evaluations("hung")}
        assert_history_consistent(app, "hung")
        assert_history_consistent(app, "fast", order=int)
        assert app.get_sensor("fast").cursor == str(len(outcomes(app, "fast", "ok")))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        app.close()


def test_sensor_loop_evaluates_many_sensors_and_prunes_history(make_app: type[fm.App]) -> None:
    app = make_app(evaluation_retention=5)

    @app.job
    def count(ctx: fm.JobContext, payload: object) -> None: ...

    names = [f"counter_{n}" for n in range(6)]
    for name in names:

        def counter(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
            n = int(cursor or 0) + 1
            return fm.SensorResult(run_requests=[fm.RunRequest(f"{ctx.sensor}-{n}")], cursor=str(n))

        app.poll_sensor(job="count", interval=0, name=name)(counter)

    loop = SensorDaemon(app._sensor_engine, max_concurrent=3, keep_last=5, prune_every=0.05)
    loop.start()
    try:
        for name in names:

            def advanced(name: str = name) -> bool:
                return app.get_sensor(name).state_version >= 15

            def pruned(name: str = name) -> bool:
                return len(app.get_evaluations(name)) < app.get_sensor(name).state_version - 5

            wait_until(advanced, what=f"{name} to be evaluated")
            wait_until(pruned, what=f"{name}'s history to be pruned")
    finally:
        loop.stop()
        assert loop.join(30)
    assert loop.crashes == 0
    for name in names:
        state = app.get_sensor(name)
        assert state.cursor == str(state.state_version)  # pruning never touches the state
        keys = {run.run_key for run in app.get_runs() if run.run_key.startswith(f"{name}-")}
        assert keys == {f"{name}-{n}" for n in range(1, state.state_version + 1)}
