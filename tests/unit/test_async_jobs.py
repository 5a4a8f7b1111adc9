"""``async def`` jobs: one event loop per worker, the same guarantees, on every store."""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Store
from ferryman.worker import Worker
from ferryman.worker.async_jobs import is_async_job
from ferryman.worker.context import JobContext
from tests.helpers import wait_until

effects = sa.table("effects", sa.column("run_key"), sa.column("attempt"))


def create_effects(app: fm.App) -> None:
    with app.engine.begin() as conn:
        conn.execute(
            sa.text("CREATE TABLE effects (run_key VARCHAR(100) NOT NULL, attempt INTEGER)")
        )


def effect_rows(app: fm.App) -> list[tuple[str, int]]:
    with app.engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT run_key, attempt FROM effects ORDER BY run_key"))
        return [(row.run_key, row.attempt) for row in rows]


def kinds(app: fm.App, run_id: int) -> list[str]:
    return [event.kind.value for event in app.get_run_events(run_id)]


def lease_expired(store: Store, run_id: int) -> bool:
    with store.engine.begin() as conn:
        now = store.runs.now(conn)
    run = store.get_run(run_id)
    assert run is not None and run.lease_expires_at is not None
    return run.lease_expires_at.timestamp() < now


def test_async_runs_overlap_on_one_thread(make_app: type[fm.App]) -> None:
    """1,000 runs at concurrency 200: the first 200 all wait until 200 are running at
    once, which only an event loop running them side by side lets happen; never more."""
    app = make_app()
    live = 0
    peak = 0
    threads: set[str] = set()
    all_running: list[asyncio.Event] = []  # made on the worker's loop, by the first run

    @app.job
    async def nap(ctx: fm.AsyncJobContext, payload: object) -> None:
        nonlocal live, peak
        threads.add(threading.current_thread().name)
        if not all_running:
            all_running.append(asyncio.Event())
        live += 1
        peak = max(peak, live)
        if live == 200:
            all_running[0].set()
        try:
            await asyncio.wait_for(all_running[0].wait(), timeout=60)
        finally:
            live -= 1

    app.submit("nap", *(fm.RunRequest(f"nap-{i:04d}") for i in range(1000)))
    report = app.work(until_idle=True, concurrency=200, handle_signals=False)

    assert (report.succeeded, report.retried, report.failed) == (1000, 0, 0)
    assert app.status()[0].counts == {fm.RunStatus.SUCCEEDED: 1000}
    # The runs overlapped, as many as concurrency allows and never more.
    assert peak == 200
    # ...and all of them on the worker's event loop: not a thread per run.
    assert threads == {"ferryman-event-loop"}


def test_effects_commit_with_success_in_an_async_transaction(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    async def load(ctx: fm.AsyncJobContext, payload: dict[str, int]) -> None:
        await asyncio.sleep(0)  # the slow part, before the transaction
        async with ctx.transaction() as conn:
            await conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            # Rows read inside the block are fetched on its thread, usable here.
            mine = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(effects)
                .where(effects.c.run_key == ctx.run_key)
            )
            assert mine == 1

    create_effects(app)
    ids = app.submit("load", *(fm.RunRequest(f"r{i}", {"n": i}) for i in range(5))).run_ids
    report = app.work(until_idle=True, concurrency=5, handle_signals=False)

    assert report.succeeded == 5
    assert effect_rows(app) == [(f"r{i}", 1) for i in range(5)]
    assert kinds(app, ids[0]) == ["requested", "claimed", "succeeded"]


def test_an_async_transaction_rolls_back_when_the_job_fails(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    async def load(ctx: fm.AsyncJobContext, payload: object) -> None:
        async with ctx.transaction() as conn:
            await conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            if ctx.attempt == 1:
                raise ConnectionError("upstream went away")

    create_effects(app)
    (run_id,) = app.submit("load", fm.RunRequest("r")).run_ids
    report = app.work(until_idle=True, handle_signals=False)

    assert (report.retried, report.succeeded) == (1, 1)
    assert effect_rows(app) == [("r", 2)]  # the first attempt's write was rolled back
    (retry,) = [e for e in app.get_run_events(run_id) if e.kind.value == "retry_scheduled"]
    assert retry.detail["error"] == "ConnectionError: upstream went away"


def test_async_reject_fails_at_once_and_errors_end_dead(make_app: type[fm.App]) -> None:
    app = make_app()
    calls: list[str] = []

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    async def parse(ctx: fm.AsyncJobContext, payload: dict[str, str]) -> None:
        calls.append(ctx.run_key)
        await asyncio.sleep(0)
        if payload["xml"] == "<broken":
            raise fm.Reject("XML not well-formed at line 1")
        raise TimeoutError("the parser service never answered")

    app.submit(
        "parse", fm.RunRequest("bad", {"xml": "<broken"}), fm.RunRequest("slow", {"xml": "<a/>"})
    )
    report = app.work(until_idle=True, handle_signals=False)

    assert (report.failed, report.retried, report.dead) == (1, 1, 1)
    by_key = {run.run_key: run for run in app.get_runs()}
    assert (by_key["bad"].status, by_key["bad"].attempt) == (fm.RunStatus.FAILED, 1)
    assert by_key["bad"].last_error == "XML not well-formed at line 1"
    assert (by_key["slow"].status, by_key["slow"].attempt) == (fm.RunStatus.DEAD, 2)
    assert by_key["slow"].last_error is not None
    assert "TimeoutError: the parser service never answered" in by_key["slow"].last_error
    assert sorted(calls) == ["bad", "slow", "slow"]


def test_async_checkpoint_and_read(make_app: type[fm.App]) -> None:
    app = make_app()
    seen: list[object] = []

    @app.job(max_attempts=3, backoff=fm.Backoff(base=0))
    async def resumable(ctx: fm.AsyncJobContext, payload: object) -> None:
        seen.append(ctx.last_checkpoint)
        async with ctx.read() as conn:
            result = await conn.execute(sa.select(effects.c.run_key))
            seen.append(sorted(result.scalars()))
        await ctx.checkpoint({"done": ctx.attempt * 10})
        await ctx.heartbeat()
        if ctx.attempt < 3:
            raise OSError("disk hiccup")
        async with ctx.transaction() as conn:
            await conn.run_sync(
                lambda sync: sync.execute(effects.insert().values(run_key="r", attempt=3))
            )

    create_effects(app)
    with app.engine.begin() as conn:
        conn.execute(effects.insert().values(run_key="staged", attempt=0))
    (run_id,) = app.submit("resumable", fm.RunRequest("r")).run_ids
    app.work(until_idle=True, handle_signals=False)

    assert seen == [None, ["staged"], {"done": 10}, ["staged"], {"done": 20}, ["staged"]]
    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.checkpoint) == (fm.RunStatus.SUCCEEDED, {"done": 30})
    assert kinds(app, run_id).count("checkpointed") == 3
    assert effect_rows(app) == [("r", 3), ("staged", 0)]


def test_a_lost_lease_refuses_every_async_write(make_app: type[fm.App]) -> None:
    app = make_app(lease_seconds=0.3)

    @app.job
    async def load(ctx: fm.AsyncJobContext, payload: object) -> None: ...

    create_effects(app)
    (run_id,) = app.submit("load", fm.RunRequest("r")).run_ids
    store = app.store
    (first,) = store.claim(worker_id="A", jobs=["load"], limit=1, lease_seconds=0.3)
    io = ThreadPoolExecutor(max_workers=2)
    zombie = fm.AsyncJobContext(
        JobContext(store=store, run=first, worker_id="A", lease_seconds=0.3), io
    )
    asyncio.run(zombie.checkpoint({"offset": 10}))  # still the owner: accepted

    wait_until(lambda: lease_expired(store, run_id), what="lease expiry")
    (second,) = store.claim(worker_id="B", jobs=["load"], limit=1, lease_seconds=30)

    async def zombie_writes() -> list[str]:
        refused = []
        try:
            await zombie.checkpoint({"offset": 20})
        except fm.LeaseLost:
            refused.append("checkpoint")
        try:
            async with zombie.transaction() as conn:
                await conn.execute(effects.insert().values(run_key="r", attempt=1))
        except fm.LeaseLost:
            refused.append("transaction")
        try:
            await zombie.heartbeat()
        except fm.LeaseLost:
            refused.append("heartbeat")
        return refused

    assert asyncio.run(zombie_writes()) == ["checkpoint", "transaction", "heartbeat"]
    assert zombie.lease_lost
    assert effect_rows(app) == []  # the zombie's effect was rolled back

    owner = fm.AsyncJobContext(
        JobContext(store=store, run=second, worker_id="B", lease_seconds=30), io
    )

    async def owner_writes() -> None:
        async with owner.transaction() as conn:
            await conn.execute(effects.insert().values(run_key="r", attempt=2))

    asyncio.run(owner_writes())
    io.shutdown()
    assert effect_rows(app) == [("r", 2)]
    assert kinds(app, run_id)[-2:] == ["claimed", "succeeded"]


def test_stop_cancels_async_jobs_past_the_grace_and_releases_their_runs(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    started = threading.Event()
    ended: list[str] = []

    @app.job
    async def slow(ctx: fm.AsyncJobContext, payload: object) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    (run_id,) = app.submit("slow", fm.RunRequest("r")).run_ids
    worker = Worker(app.store, app.jobs, lease_seconds=30, concurrency=4, grace_seconds=0.2)
    thread = threading.Thread(target=lambda: worker.run(handle_signals=False))
    thread.start()
    assert started.wait(30)
    worker.stop()
    thread.join(30)
    assert not thread.is_alive()

    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt, run.lease_token) == (fm.RunStatus.QUEUED, 0, 2)
    assert kinds(app, run_id) == ["requested", "claimed", "released"]
    assert worker.report.released == 1
    wait_until(lambda: ended, what="the abandoned task to be cancelled")
    assert ended == ["cancelled"]


def test_sync_and_async_jobs_share_a_worker(make_app: type[fm.App]) -> None:
    app = make_app()
    threads: dict[str, set[str]] = {"sync": set(), "async": set()}

    @app.job
    def blocking(ctx: fm.JobContext, payload: object) -> None:
        threads["sync"].add(threading.current_thread().name)
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    @app.job
    async def awaiting(ctx: fm.AsyncJobContext, payload: object) -> None:
        threads["async"].add(threading.current_thread().name)
        async with ctx.transaction() as conn:
            await conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    create_effects(app)
    app.submit("blocking", *(fm.RunRequest(f"s{i}") for i in range(10)))
    app.submit("awaiting", *(fm.RunRequest(f"a{i}") for i in range(10)))
    report = app.work(until_idle=True, concurrency=3, handle_signals=False)

    assert report.succeeded == 20
    assert len(effect_rows(app)) == 20
    assert threads["async"] == {"ferryman-event-loop"}
    assert threads["sync"] and all(name.startswith("ferryman-job-") for name in threads["sync"])


class _Callable:
    async def __call__(self, ctx: fm.AsyncJobContext, payload: object) -> None: ...


async def _async_job(ctx: fm.AsyncJobContext, payload: object, extra: int) -> None: ...


def _sync_job(ctx: fm.JobContext, payload: object) -> None: ...


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (_async_job, True),
        (functools.partial(_async_job, extra=1), True),
        (_Callable(), True),
        (_sync_job, False),
        (functools.partial(_sync_job), False),
    ],
)
def test_which_jobs_are_async(fn: Any, expected: bool) -> None:
    assert is_async_job(fn) is expected
