"""What a worker does with what it does not expect, on SQLite and on PostgreSQL.

Whatever a job raises — ``SystemExit`` and other ``BaseException`` included —
is a failed attempt; ``KeyboardInterrupt`` in the working thread means "stop";
a crashed worker never hands back, attempt refunded, the runs it had started.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

import ferryman as fm
from ferryman.worker import Worker
from tests.helpers import wait_until
from tests.unit.test_runs_contract import kinds, lease_expired


class Abort(BaseException):
    """A BaseException of a library's own."""


@pytest.mark.parametrize(
    "raised",
    [lambda: SystemExit(3), GeneratorExit, lambda: Abort("a library gave up"), KeyboardInterrupt],
    ids=["SystemExit", "GeneratorExit", "custom", "KeyboardInterrupt"],
)
def test_a_job_raising_a_base_exception_fails_its_attempt(
    make_app: type[fm.App], raised: Any
) -> None:
    app = make_app()
    attempts: list[int] = []

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    def quits(ctx: fm.JobContext, payload: object) -> None:
        attempts.append(ctx.attempt)
        raise raised()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    (quit_id,) = app.submit("quits", fm.RunRequest("q")).run_ids
    app.submit("load", *(fm.RunRequest(f"r-{i}") for i in range(10)))
    report = app.work(until_idle=True, handle_signals=False, concurrency=2)

    run = app.get_run(quit_id)
    assert run is not None
    assert (run.status, run.attempt) == (fm.RunStatus.DEAD, 2)
    assert type(raised()).__name__ in (run.last_error or "")
    assert attempts == [1, 2]
    assert kinds(app, quit_id) == ["requested", "claimed", "retry_scheduled", "claimed", "dead"]
    assert (report.dead, report.retried, report.succeeded, report.released) == (1, 1, 10, 0)
    assert {r.status for r in app.get_runs(job="load")} == {fm.RunStatus.SUCCEEDED}


def test_keyboard_interrupt_in_the_working_thread_stops_drains_and_releases(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    held = threading.Event()

    @app.job
    def interrupts(ctx: fm.JobContext, payload: object) -> None:
        if ctx.run_key == "first":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: Python raises it in the main thread
        else:
            held.wait(60)  # still running when the grace period ends

    first, second = app.submit(
        "interrupts", fm.RunRequest("first"), fm.RunRequest("second")
    ).run_ids
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        with pytest.raises(KeyboardInterrupt):
            app.work(handle_signals=False, concurrency=2, grace_seconds=1.0)
    finally:
        held.set()

    done = app.get_run(first)
    assert done is not None and (done.status, done.attempt) == (fm.RunStatus.SUCCEEDED, 1)
    released = app.get_run(second)
    assert released is not None
    assert (released.status, released.attempt) == (fm.RunStatus.QUEUED, 0)
    assert kinds(app, second)[-1] == "released"


def test_a_crashed_worker_leaves_started_runs_to_their_leases(make_app: type[fm.App]) -> None:
    app = make_app(lease_seconds=1.0)
    crashed = threading.Event()

    @app.job(max_attempts=2)
    def load(ctx: fm.JobContext, payload: object) -> None:
        if ctx.run_key == "running" and ctx.attempt == 1:
            crashed.wait(30)  # started, and still running when the worker crashes

    quick, running = app.submit("load", fm.RunRequest("quick"), fm.RunRequest("running")).run_ids

    def crash(run: Any, outcome: str) -> None:
        if run.run_key == "quick":
            crashed.set()
            raise RuntimeError("bookkeeping failed")  # a bug in the committer's thread

    worker = Worker(app.store, app.jobs, lease_seconds=1.0, concurrency=2, on_outcome=crash)
    with pytest.raises(fm.FerrymanError, match="bookkeeping failed"):
        worker.run(until_idle=True, handle_signals=False)

    # Handed back with its attempt refunded, a run that crashes its worker
    # would be claimed and crash one for ever; it keeps its lease instead.
    assert worker.report.released == 0
    held = app.get_run(running)
    assert held is not None and (held.status, held.attempt) == (fm.RunStatus.RUNNING, 1)
    wait_until(
        lambda: lease_expired(app.store, running), what="the crashed worker's lease to expire"
    )
    app.work(until_idle=True, handle_signals=False)
    taken_over = app.get_run(running)
    assert taken_over is not None
    assert (taken_over.status, taken_over.attempt) == (fm.RunStatus.SUCCEEDED, 2)
    assert "lease_expired" in kinds(app, running) and "released" not in kinds(app, running)
    done = app.get_run(quick)
    assert done is not None and (done.status, done.attempt) == (fm.RunStatus.SUCCEEDED, 1)
