"""An async job's timeout, on every store: the job is told, the attempt ends, retried later.

``@app.job(timeout=s)`` on an ``async def`` job: ``ctx.deadline`` is the
attempt's start plus ``s`` and ``ctx.cancelled`` turns true once it passes;
the attempt then ends with "timed out after ``s``s", retried after the job's
backoff (``dead`` on the last attempt), its lease token bumped so that
nothing the job commits afterwards counts — while the worker's other async
runs go on, on the same event loop.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm

TIMEOUT = 0.5
# No jitter: the retry is due exactly BACKOFF seconds after the timeout.
BACKOFF = fm.Backoff(base=0.6, factor=1.0, max=0.6, jitter=0.0)
effects = sa.table("at_effects", sa.column("run_key"), sa.column("attempt"))


def create_effects(app: fm.App) -> None:
    with app.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE at_effects (run_key VARCHAR(100), attempt INTEGER)"))


def effect_rows(app: fm.App) -> list[tuple[str, int]]:
    with app.engine.begin() as conn:
        return sorted((r.run_key, r.attempt) for r in conn.execute(sa.select(effects)))


async def until_cancelled(ctx: fm.AsyncJobContext, within: float = 30.0) -> float:
    """What a well-behaved async job does: notice ``ctx.cancelled``; when it did (monotonic)."""
    give_up = time.monotonic() + within
    while not ctx.cancelled:
        assert time.monotonic() < give_up, "ctx.cancelled never turned true"
        await asyncio.sleep(0.01)
    return time.monotonic()


def work_until_settled(app: fm.App, within: float = 60.0) -> list[fm.WorkReport]:
    """Work until no run is queued or running (a retry comes due after its backoff)."""
    deadline = time.monotonic() + within
    reports = []
    while True:
        reports.append(app.work(until_idle=True, handle_signals=False, concurrency=4))
        unsettled = [
            r for r in app.get_runs() if r.status in (fm.RunStatus.QUEUED, fm.RunStatus.RUNNING)
        ]
        if not unsettled:
            return reports
        assert time.monotonic() < deadline, f"runs still unsettled: {unsettled}"


@pytest.mark.timeout(120)
def test_an_async_timeout_tells_the_job_ends_the_attempt_and_retries_after_the_backoff(
    make_app: type[fm.App],
) -> None:
    app = make_app(lease_seconds=30.0)
    create_effects(app)
    seen: dict[str, Any] = {}

    @app.job(timeout=TIMEOUT, backoff=BACKOFF, max_attempts=3)
    async def slow(ctx: fm.AsyncJobContext, payload: object) -> None:
        if ctx.attempt > 1:
            async with ctx.transaction() as conn:
                await conn.execute(effects.insert().values(run_key="slow", attempt=ctx.attempt))
            return
        started = time.monotonic()
        seen["deadline"], seen["cancelled at start"] = ctx.deadline, ctx.cancelled
        seen["told after"] = await until_cancelled(ctx) - started
        try:
            async with ctx.transaction() as conn:  # too late: refused
                await conn.execute(effects.insert().values(run_key="slow", attempt=1))
        except fm.LeaseLost:
            seen["late commit"] = "refused"

    @app.job(concurrency=4)
    async def quick(ctx: fm.AsyncJobContext, payload: object) -> None:
        assert ctx.deadline is None and not ctx.cancelled
        async with ctx.transaction() as conn:
            await conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    (run_id,) = app.submit("slow", fm.RunRequest("slow")).run_ids
    app.submit("quick", *(fm.RunRequest(f"q-{i}") for i in range(8)))
    reports = work_until_settled(app)

    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt) == (fm.RunStatus.SUCCEEDED, 2)
    # The timed-out attempt's commit was refused; the quick runs went on meanwhile.
    assert seen["late commit"] == "refused"
    assert effect_rows(app) == sorted([("slow", 2), *((f"q-{i}", 1) for i in range(8))])
    assert sum(r.timed_out for r in reports) == 1 and sum(r.retried for r in reports) == 1

    events = app.get_run_events(run_id)
    assert [e.kind.value for e in events] == [
        *("requested", "claimed", "retry_scheduled", "claimed", "succeeded")
    ]
    claimed, retry, reclaimed = events[1], events[2], events[3]
    assert retry.detail["error"] == f"TimeoutError: timed out after {TIMEOUT:g}s"
    assert retry.detail["timeout"] == TIMEOUT
    # The job was told: a deadline measured from the attempt's start, and
    # ctx.cancelled false until it passed, true soon after.
    deadline = seen["deadline"]
    assert isinstance(deadline, datetime) and deadline.tzinfo is not None
    assert deadline - claimed.at == pytest.approx(timedelta(seconds=TIMEOUT), abs=timedelta(0.2))
    assert seen["cancelled at start"] is False
    assert TIMEOUT <= seen["told after"] < TIMEOUT + 5
    # The attempt ended at its deadline, and the retry waited out the backoff.
    assert retry.at - claimed.at >= timedelta(seconds=TIMEOUT)
    assert reclaimed.at - retry.at >= timedelta(seconds=BACKOFF.delay(1, "slow\x00slow"))
    # The token was bumped with the timeout: the second claim's is two on.
    assert reclaimed.lease_token == claimed.lease_token + 2  # type: ignore[operator]


@pytest.mark.timeout(120)
def test_an_async_job_that_ignores_its_timeout_is_dead_on_its_last_attempt(
    make_app: type[fm.App],
) -> None:
    app = make_app(lease_seconds=30.0)
    create_effects(app)

    @app.job(timeout=0.3, max_attempts=1)
    async def stubborn(ctx: fm.AsyncJobContext, payload: object) -> None:
        await asyncio.sleep(1.0)  # ignores ctx.cancelled, then tries to commit
        async with ctx.transaction() as conn:
            await conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    (run_id,) = app.submit("stubborn", fm.RunRequest("s")).run_ids
    report = app.work(until_idle=True, handle_signals=False)

    run = app.get_run(run_id)
    assert run is not None and run.status is fm.RunStatus.DEAD
    assert run.last_error is not None and "timed out after 0.3s" in run.last_error
    assert effect_rows(app) == []  # its commit after the timeout was refused
    assert (report.timed_out, report.dead, report.lease_lost) == (1, 1, 0)
    kinds = [e.kind.value for e in app.get_run_events(run_id)]
    assert kinds == ["requested", "claimed", "dead"]
