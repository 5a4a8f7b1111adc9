"""Sensor apps for the tests, runnable as real processes, and the checks the tests share.

``python -m tests.sensor_apps MODE STORE [ARGS]``:

* ``counter STORE GATE N`` — wait for the file GATE, then tick the ``counter``
  sensor N times (its cursor is an integer; each evaluation requests run n+1);
* ``push STORE GATE`` — wait for GATE, then deliver messages ``m0`` ... ``m199``
  to the ``hook`` push sensor, in a shuffled order;
* ``files STORE DIR`` — the daemon (``app.run()``) with a poll sensor over the
  files of DIR, whose cursor is the last file name taken (killed by the crash
  test);
* ``daemon STORE GATE_DIR`` — the daemon with a sensor that hangs until a gate
  file appears and a fast counter beside it.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import threading
import time
from pathlib import Path

import ferryman as fm

PUSH_MESSAGES = 200
FILES_PER_EVALUATION = 3


def counter_app(store: str) -> fm.App:
    app = fm.App(store)

    @app.job
    def count(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="count", interval=0, backoff=fm.Backoff(base=0))
    def counter(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(str(n))], cursor=str(n))

    return app


def push_app(store: str) -> fm.App:
    app = fm.App(store)

    @app.job
    def handle(ctx: fm.JobContext, payload: object) -> None: ...

    @app.push_sensor(job="handle")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        return [fm.RunRequest(f"run-{message.message_id}", message.payload)]

    return app


def files_app(store: str, directory: Path) -> fm.App:
    app = fm.App(store, lease_seconds=5)

    @app.job
    def ingest_file(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="ingest_file", interval=0, backoff=fm.Backoff(base=0))
    def files(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".xml"))
        batch = [name for name in names if cursor is None or name > cursor]
        batch = batch[:FILES_PER_EVALUATION]
        if not batch:
            return fm.SensorResult(cursor=cursor)
        return fm.SensorResult(
            run_requests=[fm.RunRequest(name, {"path": name}) for name in batch],
            cursor=batch[-1],
        )

    return app


def daemon_app(store: str, gates: Path) -> fm.App:
    app = fm.App(store)

    @app.job
    def noop(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="noop", interval=0.1, timeout=0.5, backoff=fm.Backoff(base=0.05))
    def hung(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        if cursor is None and ctx.state_version == 0:
            (gates / "hung.started").touch()
            while not (gates / "hung.go").exists():
                time.sleep(0.01)
            result = fm.SensorResult(run_requests=[fm.RunRequest("late")], cursor="late")
            (gates / "hung.returned").touch()
            return result
        return fm.SensorResult(run_requests=[fm.RunRequest("on-time")], cursor="on-time")

    @app.poll_sensor(job="noop", interval=0)
    def fast(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(f"fast-{n}")], cursor=str(n))

    return app


def wait_for(gate: Path) -> None:
    deadline = time.monotonic() + 60
    while not gate.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never created {gate}")
        time.sleep(0.005)


def main(mode: str, store: str, *args: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    if mode == "counter":
        app = counter_app(store)
        wait_for(Path(args[0]))
        for _ in range(int(args[1])):
            app.tick(["counter"])
        app.close()
    elif mode == "push":
        app = push_app(store)
        ids = [f"m{i}" for i in range(PUSH_MESSAGES)]
        random.shuffle(ids)
        wait_for(Path(args[0]))

        def deliver() -> None:
            for message_id in ids:
                app.ingest("hook", message_id, {"id": message_id})

        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        app.close()
    elif mode == "files":
        files_app(store, Path(args[0])).run(concurrency=2, grace_seconds=1)
    elif mode == "daemon":
        daemon_app(store, Path(args[0])).run(concurrency=1, grace_seconds=2)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])


def assert_history_consistent(app: fm.App, name: str, order: type = str) -> list[fm.Evaluation]:
    """Check a poll sensor's history; return its ``ok`` evaluations.

    Evaluations that won the compare-and-swap (ok, failed, manual) form one
    chain of state versions without gaps or repeats, and the cursor after each
    ``ok`` evaluation is never behind the one before; a ``conflict`` changed
    nothing.
    """
    history = app.get_evaluations(name)
    winners = [e for e in history if e.outcome is not fm.EvaluationOutcome.CONFLICT]
    for before, after in itertools.pairwise(winners):
        assert after.state_version_before == before.state_version_after, (before, after)
    for evaluation in winners:
        assert evaluation.state_version_after == evaluation.state_version_before + 1
    for evaluation in history:
        if evaluation.outcome is fm.EvaluationOutcome.CONFLICT:
            assert evaluation.state_version_after is None and evaluation.run_ids == ()
    state = app.get_sensor(name)
    if winners:
        assert state.state_version == winners[-1].state_version_after
    ok = [e for e in winners if e.outcome is fm.EvaluationOutcome.OK]
    cursors = [order(e.cursor_after) for e in ok if e.cursor_after is not None]
    assert cursors == sorted(cursors), "a cursor moved backwards"
    return ok


def assert_exactly_once(app: fm.App) -> None:
    """Every message of the ``hook`` sensor has one evaluation and one run."""
    evaluations = app.get_evaluations("hook")
    assert len(evaluations) == PUSH_MESSAGES
    assert {e.outcome for e in evaluations} == {fm.EvaluationOutcome.OK}
    assert sorted(e.idempotency_key or "" for e in evaluations) == sorted(
        f"push:hook:m{i}" for i in range(PUSH_MESSAGES)
    )
    assert sum(e.runs_requested - e.runs_deduplicated for e in evaluations) == PUSH_MESSAGES
    runs = app.get_runs(job="handle")
    assert sorted(r.run_key for r in runs) == sorted(f"run-m{i}" for i in range(PUSH_MESSAGES))
    # Each run's log starts with its one request, none written twice.
    for run in runs:
        kinds = [event.kind for event in app.get_run_events(run.id)]
        assert kinds.count(fm.RunEventKind.REQUESTED) == 1, (run.run_key, kinds)
