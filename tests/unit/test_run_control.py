"""Run control on every store: timeouts, cancelling running runs, chaining (ctx.submit)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.helpers import wait_until
from tests.properties.replay import replay

QUICK = fm.Backoff(base=0.01, factor=1.0, max=0.01)
effects = sa.table("rc_effects", sa.column("run_key"), sa.column("attempt"))


def create_effects(app: fm.App) -> None:
    with app.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE rc_effects (run_key VARCHAR(100), attempt INTEGER)"))


def effect_rows(app: fm.App) -> list[tuple[str, int]]:
    with app.engine.begin() as conn:
        return sorted((r.run_key, r.attempt) for r in conn.execute(sa.select(effects)))


def events(app: fm.App, run_id: int) -> list[fm.RunEvent]:
    return app.get_run_events(run_id)


def assert_log_replays(app: fm.App, run_id: int) -> None:
    """The processing log alone rebuilds the run's status, attempt and token."""
    run = app.get_run(run_id)
    assert run is not None
    replayed = replay(events(app, run_id))
    assert (replayed.status, replayed.attempt, replayed.lease_token) == (
        run.status,
        run.attempt,
        run.lease_token,
    )


def wait_cancelled(ctx: fm.JobContext, within: float = 30.0) -> None:
    """What a well-behaved job does: notice ctx.cancelled (polled with a deadline)."""
    wait_until(lambda: ctx.cancelled, timeout=within, what="ctx.cancelled")


# -- timeouts -----------------------------------------------------------------


def test_timeout_retries_with_the_message_and_refuses_a_late_commit(
    make_app: type[fm.App],
) -> None:
    app = make_app(lease_seconds=30.0)
    create_effects(app)
    seen: dict[int, Any] = {}

    @app.job(timeout=0.5, backoff=QUICK, max_attempts=3)
    def slow(ctx: fm.JobContext, payload: object) -> None:
        seen[ctx.attempt] = ctx.deadline
        if ctx.attempt == 1:
            wait_cancelled(ctx)
            try:
                with ctx.transaction() as conn:  # too late: refused
                    conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=1))
            except fm.LeaseLost:
                seen["late commit"] = "refused"
            return
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    (run_id,) = app.submit("slow", fm.RunRequest("s")).run_ids
    report = app.work(until_idle=True, handle_signals=False)

    run = app.get_run(run_id)
    assert run is not None and run.status is fm.RunStatus.SUCCEEDED and run.attempt == 2
    assert effect_rows(app) == [("s", 2)]
    assert seen["late commit"] == "refused"
    assert (report.timed_out, report.retried, report.succeeded) == (1, 1, 1)
    kinds = [e.kind.value for e in events(app, run_id)]
    assert kinds == ["requested", "claimed", "retry_scheduled", "claimed", "succeeded"]
    retry = events(app, run_id)[2]
    assert retry.detail["error"] == "TimeoutError: timed out after 0.5s"
    claimed = events(app, run_id)[1]
    deadline = seen[1]
    assert isinstance(deadline, datetime) and deadline.tzinfo is not None
    # Measured from the start of the attempt, which came right after its claim.
    assert deadline - claimed.at == pytest.approx(timedelta(seconds=0.5), abs=timedelta(0.1))
    # The token was bumped with the timeout: the second claim's is two on.
    assert events(app, run_id)[3].lease_token == claimed.lease_token + 2  # type: ignore[operator]
    assert_log_replays(app, run_id)


def test_a_timeout_on_the_last_attempt_is_dead(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(timeout=0.2, max_attempts=1)
    def slow(ctx: fm.JobContext, payload: object) -> None:
        wait_cancelled(ctx)

    @app.job
    def quick(ctx: fm.JobContext, payload: object) -> None:
        assert ctx.deadline is None and not ctx.cancelled

    (run_id,) = app.submit("slow", fm.RunRequest("s")).run_ids
    app.submit("quick", fm.RunRequest("q"))
    app.work(until_idle=True, handle_signals=False)
    run = app.get_run(run_id)
    assert run is not None and run.status is fm.RunStatus.DEAD
    assert run.last_error is not None and "timed out after 0.2s" in run.last_error
    assert [r.status for r in app.get_runs(job="quick")] == [fm.RunStatus.SUCCEEDED]


def test_timeout_must_be_positive(make_app: type[fm.App]) -> None:
    app = make_app()
    with pytest.raises(fm.ConfigurationError, match="timeout"):
        app.job(timeout=0)(lambda ctx, payload: None)


# -- cancelling -----------------------------------------------------------------


def _run_in_thread(app: fm.App) -> tuple[threading.Thread, list[fm.WorkReport]]:
    reports: list[fm.WorkReport] = []
    thread = threading.Thread(
        target=lambda: reports.append(app.work(until_idle=True, handle_signals=False))
    )
    thread.start()
    return thread, reports


@pytest.mark.parametrize("commit_path", ["transaction", "return"])
def test_cancel_a_running_run(make_app: type[fm.App], commit_path: str) -> None:
    app = make_app(lease_seconds=0.6)  # heartbeats every 0.2 s
    create_effects(app)
    started = threading.Event()
    outcome: list[str] = []

    @app.job
    def long(ctx: fm.JobContext, payload: object) -> None:
        started.set()
        wait_cancelled(ctx)
        ctx.submit("long", fm.RunRequest("child"))
        if commit_path == "return":
            outcome.append("returned")
            return  # the worker's success is refused: the run stays cancelled
        try:
            with ctx.transaction() as conn:
                conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
        except fm.LeaseLost:
            outcome.append("refused")

    (run_id,) = app.submit("long", fm.RunRequest("r")).run_ids
    thread, reports = _run_in_thread(app)
    assert started.wait(30)
    cancelled = app.cancel(run_id, by="alice")
    thread.join(60)
    assert not thread.is_alive()

    assert cancelled is not None and cancelled.status is fm.RunStatus.CANCELLED
    assert outcome == ["refused" if commit_path == "transaction" else "returned"]
    run = app.get_run(run_id)
    assert run is not None and run.status is fm.RunStatus.CANCELLED
    assert effect_rows(app) == []
    assert [r.run_key for r in app.get_runs(job="long")] == ["r"]  # no child either
    last = events(app, run_id)[-1]
    assert last.kind is fm.RunEventKind.CANCELLED and last.worker_id == "alice"
    assert last.detail == {"by": "alice", "was": "running"}
    assert reports[0].succeeded == 0 and reports[0].lease_lost == 1
    assert_log_replays(app, run_id)


def test_cancel_returns_the_run_or_none(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    (done_id, queued_id) = app.submit("load", fm.RunRequest("a"), fm.RunRequest("b")).run_ids
    assert app.cancel(queued_id, by="bob") is not None
    app.work(until_idle=True, handle_signals=False)
    assert app.cancel(done_id) is None  # succeeded: nothing to cancel
    assert app.cancel(424242) is None
    assert app.get_run(queued_id).status is fm.RunStatus.CANCELLED  # type: ignore[union-attr]
    assert events(app, queued_id)[-1].detail == {"by": "bob", "was": "queued"}


def test_bulk_cancel_and_retry_since(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(max_attempts=1)
    def flaky(ctx: fm.JobContext, payload: dict[str, bool]) -> None:
        if payload["fail"]:
            raise RuntimeError("boom")

    @app.job
    def other(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("flaky", *(fm.RunRequest(f"f{i}", {"fail": True}) for i in range(3)))
    app.work(until_idle=True, handle_signals=False)
    app.submit("flaky", *(fm.RunRequest(f"q{i}", {"fail": False}) for i in range(4)))
    app.submit("other", fm.RunRequest("o"))

    cancelled = app.cancel_runs(job="flaky", status="queued", by="ops")
    assert len(cancelled) == 4
    assert [r.status for r in app.get_runs(job="other")] == [fm.RunStatus.QUEUED]
    with pytest.raises(fm.ConfigurationError):
        app.cancel_runs(job="flaky", status="dead")

    assert app.retry(job="flaky", status="dead", since=3600.0, by="ops") != []
    assert {r.status for r in app.get_runs(job="flaky") if r.run_key.startswith("f")} == {
        fm.RunStatus.QUEUED
    }
    app.work(until_idle=True, handle_signals=False)
    # They died again just now: a window of 0 s reaches back to no finish at all.
    assert app.retry(job="flaky", status="dead", since=0.0) == []


# -- chaining -------------------------------------------------------------------


def _links(app: fm.App, parent: int) -> tuple[list[int], list[int]]:
    """The children the parent's log names, and the runs whose log names the parent."""
    named = [
        rid
        for e in events(app, parent)
        if e.kind is fm.RunEventKind.SUBMITTED
        for rid in e.detail["run_ids"]
    ]
    pointing = [
        r.id
        for r in app.get_runs()
        if any(e.detail.get("parent_run_id") == parent for e in events(app, r.id))
    ]
    return named, pointing


@pytest.mark.parametrize("commit_path", ["transaction", "return"])
def test_children_exist_iff_the_parent_succeeded(make_app: type[fm.App], commit_path: str) -> None:
    app = make_app()
    create_effects(app)

    @app.job(max_attempts=2, backoff=QUICK)
    def parent(ctx: fm.JobContext, payload: dict[str, str]) -> None:
        ctx.submit("child", fm.RunRequest(f"{ctx.run_key}-c1", {"n": 1}))
        if payload["mode"] == "reject":
            raise fm.Reject("bad input")
        if payload["mode"] == "flaky" and ctx.attempt == 1:
            raise RuntimeError("first attempt fails after submitting")
        if commit_path == "transaction":
            with ctx.transaction() as conn:
                ctx.submit("child", fm.RunRequest(f"{ctx.run_key}-c2"))
                conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
        else:
            ctx.submit("child", fm.RunRequest(f"{ctx.run_key}-c2"))

    @app.job
    def child(ctx: fm.JobContext, payload: object) -> None: ...

    ok, rejected, flaky = app.submit(
        "parent",
        fm.RunRequest("ok", {"mode": "ok"}),
        fm.RunRequest("rej", {"mode": "reject"}),
        fm.RunRequest("flaky", {"mode": "flaky"}),
    ).run_ids
    app.work(until_idle=True, handle_signals=False)

    children = {r.run_key: r for r in app.get_runs(job="child")}
    assert sorted(children) == ["flaky-c1", "flaky-c2", "ok-c1", "ok-c2"]
    assert {r.status for r in children.values()} == {fm.RunStatus.SUCCEEDED}
    assert children["ok-c1"].payload == {"n": 1}
    for parent_id, keys in ((ok, ["ok-c1", "ok-c2"]), (flaky, ["flaky-c1", "flaky-c2"])):
        named, pointing = _links(app, parent_id)
        assert sorted(named) == sorted(pointing) == sorted(children[k].id for k in keys)
    assert _links(app, rejected) == ([], [])
    # The child was submitted once however many attempts asked: one submitted row.
    submitted = [e for e in events(app, flaky) if e.kind is fm.RunEventKind.SUBMITTED]
    assert len(submitted) == 1 and submitted[0].attempt == 2


def test_submit_after_the_transaction_is_refused(make_app: type[fm.App]) -> None:
    app = make_app()
    errors: list[str] = []

    @app.job
    def parent(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction():
            pass
        try:
            ctx.submit("parent", fm.RunRequest("late"))
        except fm.FerrymanError as exc:
            errors.append(str(exc))

    app.submit("parent", fm.RunRequest("p"))
    app.work(until_idle=True, handle_signals=False)
    assert [r.run_key for r in app.get_runs()] == ["p"]
    assert errors and "after ctx.transaction() committed" in errors[0]


def test_a_child_of_an_unknown_job_fails_the_parent(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(max_attempts=1)
    def parent(ctx: fm.JobContext, payload: object) -> None:
        ctx.submit("nope", fm.RunRequest("c"))

    (run_id,) = app.submit("parent", fm.RunRequest("p")).run_ids
    app.work(until_idle=True, handle_signals=False)
    run = app.get_run(run_id)
    assert run is not None and run.status is fm.RunStatus.DEAD
    assert run.last_error is not None and "nope" in run.last_error


def test_deadline_counts_from_the_start_of_the_attempt(make_app: type[fm.App]) -> None:
    app = make_app()
    seen: list[float] = []

    @app.job(timeout=60)
    def job(ctx: fm.JobContext, payload: object) -> None:
        assert ctx.deadline is not None
        seen.append((ctx.deadline - datetime.now(UTC)).total_seconds())

    app.submit("job", fm.RunRequest("j"))
    started = time.monotonic()
    app.work(until_idle=True, handle_signals=False)
    assert len(seen) == 1 and 0 < seen[0] <= 60 + (time.monotonic() - started)


def test_time_waiting_in_the_worker_does_not_count_against_the_timeout(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    left: list[float] = []

    @app.job
    def first(ctx: fm.JobContext, payload: object) -> None:
        time.sleep(1.0)  # holds the only job thread while `timed` waits, claimed

    @app.job(timeout=0.8)
    def timed(ctx: fm.JobContext, payload: object) -> None:
        assert ctx.deadline is not None
        left.append((ctx.deadline - datetime.now(UTC)).total_seconds())

    app.submit("first", fm.RunRequest("a"))
    (timed_id,) = app.submit("timed", fm.RunRequest("b")).run_ids
    report = app.work(until_idle=True, concurrency=1, prefetch=1, handle_signals=False)
    assert report.timed_out == 0 and report.succeeded == 2
    assert app.get_run(timed_id).attempt == 1  # type: ignore[union-attr]
    assert len(left) == 1 and left[0] > 0.5
