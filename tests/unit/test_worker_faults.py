"""What a worker does with what it does not expect, on SQLite and on PostgreSQL.

Whatever a job raises — ``SystemExit`` and other ``BaseException`` included —
is a failed attempt; ``KeyboardInterrupt`` in the working thread means "stop";
a store that fails under an attempt gives the attempt back; a crashed worker
never hands back, attempt refunded, the runs it had started.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Lease
from ferryman.worker import Worker
from ferryman.worker.outages import GIVE_BACK_LIMIT
from tests.helpers import wait_until
from tests.mariadb_pool import admin_connection, execute
from tests.unit.test_runs_contract import create_effects, effect_keys, kinds, lease_expired


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
    # Python's own Ctrl-C handler, even in a suite started with SIGINT ignored (as a
    # shell starts a background job): what the worker does with the KeyboardInterrupt
    # it raises is what is tested.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            app.work(handle_signals=False, concurrency=2, grace_seconds=1.0)
    finally:
        held.set()
        signal.signal(signal.SIGINT, previous)

    done = app.get_run(first)
    assert done is not None and (done.status, done.attempt) == (fm.RunStatus.SUCCEEDED, 1)
    released = app.get_run(second)
    assert released is not None
    assert (released.status, released.attempt) == (fm.RunStatus.QUEUED, 0)
    assert kinds(app, second)[-1] == "released"


def test_an_outcome_is_counted_only_once_it_is_committed(make_app: type[fm.App]) -> None:
    app = make_app()
    started = threading.Event()
    proceed = threading.Event()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None:
        if ctx.run_key == "taken":
            started.set()
            proceed.wait(30)  # returns after another worker took the run over

    plain, taken = app.submit("load", fm.RunRequest("plain"), fm.RunRequest("taken")).run_ids
    # One run at a time and none claimed ahead, so this worker cannot claim "taken" again.
    worker = Worker(app.store, app.jobs, lease_seconds=30, concurrency=1, prefetch=0)
    thread = threading.Thread(target=lambda: worker.run(until_idle=True, handle_signals=False))
    thread.start()
    try:
        assert started.wait(30)
        held = app.get_run(taken)
        assert held is not None and held.lease_owner == worker.worker_id
        # Another worker takes the run over while the job is still running.
        app.store.release(
            [Lease(run_id=taken, token=held.lease_token)], worker_id="B", reason="taken over by B"
        )
        (claimed,) = app.store.claim(worker_id="B", jobs=["load"], limit=1, lease_seconds=30)
        assert claimed.id == taken
    finally:
        proceed.set()
        thread.join(30)
    assert not thread.is_alive()

    # The job returned, but its outcome was refused: counted as a lost lease, not a success.
    assert (worker.report.succeeded, worker.report.lease_lost) == (1, 1)
    run = app.get_run(taken)
    assert run is not None and (run.status, run.lease_owner) == (fm.RunStatus.RUNNING, "B")
    # What the report counts is exactly what the store shows this worker completed.
    completed = [
        run_id
        for run_id in (plain, taken)
        for event in app.get_run_events(run_id)
        if event.kind.value == "succeeded" and event.worker_id == worker.worker_id
    ]
    assert completed == [plain]


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


def test_a_users_integrity_error_in_the_transaction_is_the_jobs_failure(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            conn.execute(sa.text("INSERT INTO once VALUES ('same')"))

    with app.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE once (name VARCHAR(50) PRIMARY KEY)"))
    ids = app.submit("load", fm.RunRequest("a"), fm.RunRequest("b")).run_ids
    report = app.work(until_idle=True, handle_signals=False, concurrency=1)

    runs = [app.get_run(run_id) for run_id in ids]
    assert sorted(str(r.status) for r in runs if r is not None) == ["dead", "succeeded"]
    (dead,) = [r for r in runs if r is not None and r.status is fm.RunStatus.DEAD]
    assert "IntegrityError" in (dead.last_error or "")
    assert (report.dead, report.released) == (1, 0)
    with app.engine.begin() as conn:
        assert conn.execute(sa.text("SELECT name FROM once")).scalars().all() == ["same"]


def break_the_store_under(conn: sa.Connection, store_url: str) -> None:
    """Make the store's database fail under the statement that follows, for real."""
    if store_url.startswith("sqlite"):
        # The database may not grow: the next insert fails with SQLITE_FULL.
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        try:
            conn.execute(sa.text("INSERT INTO effects (run_key) VALUES (:k)"), {"k": "x" * 200_000})
        finally:
            conn.exec_driver_sql("PRAGMA max_page_count = 1073741823")
        return
    if conn.dialect.name == "mariadb":
        # An administrator kills this connection, as a restart would.
        connection_id = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
        with admin_connection() as admin:
            execute(admin, f"KILL {int(connection_id)}")
        conn.execute(sa.text("INSERT INTO effects (run_key) VALUES ('never')"))
        return
    # PostgreSQL: an administrator ends this connection, as a restart would.
    pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with psycopg.connect(store_url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    conn.execute(sa.text("INSERT INTO effects (run_key) VALUES ('never')"))


def test_a_store_failing_under_the_transaction_uses_no_attempt(
    make_app: type[fm.App], store_url: str
) -> None:
    app = make_app()
    broken: list[str] = []

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            conn.execute(sa.text("INSERT INTO effects (run_key) VALUES (:k)"), {"k": ctx.run_key})
            if ctx.run_key in ("r-3", "r-7") and ctx.run_key not in broken:
                broken.append(ctx.run_key)
                break_the_store_under(conn, store_url)

    create_effects(app)
    ids = app.submit("load", *(fm.RunRequest(f"r-{i}") for i in range(10))).run_ids
    report = app.work(until_idle=True, handle_signals=False, concurrency=2)

    assert sorted(broken) == ["r-3", "r-7"]
    runs = [app.get_run(run_id) for run_id in ids]
    assert [(r.status, r.attempt) for r in runs if r is not None] == [
        (fm.RunStatus.SUCCEEDED, 1)
    ] * 10
    assert effect_keys(app) == sorted(f"r-{i}" for i in range(10))  # each exactly once
    # Two runs broke the store; on SQLite a run sharing their commit is given back too.
    assert report.released >= 2 and report.dead == 0
    for run in runs:
        assert run is not None
        if run.run_key in broken:
            events = app.get_run_events(run.id)
            assert [e.kind.value for e in events] == [
                *("requested", "claimed", "released", "claimed", "succeeded")
            ]
            assert "the store failed" in str(events[2].detail.get("reason"))


def test_a_shared_sqlite_commit_lost_to_another_writers_failure_uses_no_attempt(
    sqlite_url: str,
) -> None:
    app = fm.App(sqlite_url)
    group = app.store.backend.group_commit
    assert group is not None
    innocent_inside = threading.Event()
    broken: list[str] = []

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: object) -> None:
        if ctx.run_key == "breaker" and not broken:
            assert innocent_inside.wait(30)
        with ctx.transaction() as conn:
            conn.execute(sa.text("INSERT INTO effects (run_key) VALUES (:k)"), {"k": ctx.run_key})
            if ctx.run_key == "innocent" and not innocent_inside.is_set():
                innocent_inside.set()
                # The breaker queues for the write turn, then joins this transaction.
                wait_until(lambda: group._queued == 1, what="the breaker to queue")
            elif ctx.run_key == "breaker" and not broken:
                broken.append(ctx.run_key)
                break_the_store_under(conn, sqlite_url)

    create_effects(app)
    ids = app.submit("load", fm.RunRequest("innocent"), fm.RunRequest("breaker")).run_ids
    try:
        report = app.work(until_idle=True, handle_signals=False, concurrency=2, prefetch=0)

        assert broken == ["breaker"]
        runs = [app.get_run(run_id) for run_id in ids]
        assert [(r.status, r.attempt) for r in runs if r is not None] == [
            (fm.RunStatus.SUCCEEDED, 1)
        ] * 2
        assert effect_keys(app) == ["breaker", "innocent"]
        assert (report.released, report.dead) == (2, 0)
    finally:
        app.close()


def test_a_job_that_makes_the_store_fail_every_time_cannot_loop(
    make_app: type[fm.App], store_url: str
) -> None:
    app = make_app()

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            break_the_store_under(conn, store_url)

    create_effects(app)
    (run_id,) = app.submit("load", fm.RunRequest("r")).run_ids
    report = app.work(until_idle=True, handle_signals=False, concurrency=1)

    run = app.get_run(run_id)
    assert run is not None and (run.status, run.attempt) == (fm.RunStatus.DEAD, 1)
    # Given back GIVE_BACK_LIMIT times in a row, then the attempt counts.
    assert kinds(app, run_id) == [
        "requested",
        *(["claimed", "released"] * GIVE_BACK_LIMIT),
        *("claimed", "dead"),
    ]
    assert (report.released, report.dead) == (GIVE_BACK_LIMIT, 1)


def test_a_run_retried_at_once_and_claimed_again_stays_held(make_app: type[fm.App]) -> None:
    """A run retried with no delay may be claimed again before its retry is forgotten.

    The new claim must stay held (heartbeats renew it, ``until_idle`` waits
    for it): here the retry's bookkeeping waits until the claim loop has taken
    the run again, and the second attempt outlasts the lease.
    """
    app = make_app()
    lease_seconds = 1.0

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0.0))
    def slow_second_time(ctx: fm.JobContext, payload: object) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")
        ctx.checkpoint({"second attempt": "started"})
        threading.Event().wait(2.5 * lease_seconds)  # outlive the lease: heartbeats must renew

    def claimed_again_first(run: Any, outcome: str) -> None:
        if outcome == "retry":
            wait_until(
                lambda: getattr(app.get_run(run.id), "attempt", 0) == 2,
                what="the claim loop to take the retried run again",
            )

    (run_id,) = app.submit("slow_second_time", fm.RunRequest("r")).run_ids
    worker = Worker(
        app.store,
        app.jobs,
        lease_seconds=lease_seconds,
        concurrency=2,
        poll_interval=0.01,
        on_outcome=claimed_again_first,
    )
    report = worker.run(until_idle=True, handle_signals=False)

    run = app.get_run(run_id)
    assert run is not None and (run.status, run.attempt) == (fm.RunStatus.SUCCEEDED, 2)
    assert kinds(app, run_id) == [
        "requested",
        "claimed",
        "retry_scheduled",
        "claimed",
        "checkpointed",
        "succeeded",
    ]
    assert (report.succeeded, report.retried) == (1, 1)
