"""Runs by job and status carried forward from the processing log stay exact, on every store.

After each kind of move (submits and duplicates, claims, successes,
rejections, retries after an error, cancels of queued and running runs,
retries by hand, a lease taken over, a lease expiring on the last attempt,
pruning), the carried count equals a real ``COUNT(*) ... GROUP BY`` of the
table; counting every run again is forbidden after the first count, so each
figure below was carried. On PostgreSQL and MariaDB, a log row committed
after a newer one is still counted once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.model import RunStatus
from ferryman.store import NewRun, Store, run_tally
from ferryman.store.read_model import RunCount
from ferryman.store.schema import runs
from tests.helpers import wait_until

NO_WAIT = fm.Backoff(base=0.0, jitter=0.0)


def real_count(store: Store) -> dict[str, dict[RunStatus, int]]:
    counts: dict[str, dict[RunStatus, int]] = {}
    with store.read("counting for the test") as conn:
        query = sa.select(runs.c.job, runs.c.status, sa.func.count()).group_by(
            runs.c.job, runs.c.status
        )
        for job, status, count in conn.execute(query):
            counts.setdefault(job, {})[RunStatus(status)] = count
    return counts


def carried(store: Store, previous: RunCount) -> RunCount:
    counted = store.count_runs(previous)
    assert counted.counts == real_count(store)
    return counted


def forbid_counting(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Make counting every run fail, unless the returned switch allows it."""
    count = run_tally.count
    allowed = {"count": False}

    def counting(*args: Any) -> RunCount:
        if not allowed["count"]:
            raise AssertionError("counted every run instead of carrying the count forward")
        return count(*args)

    monkeypatch.setattr(run_tally, "count", counting)
    return allowed


def lease_expired(store: Store, run_id: int) -> bool:
    with store.read("reading a lease") as conn:
        row = conn.execute(sa.select(runs.c.lease_expires_at).where(runs.c.id == run_id)).one()
        return bool(row.lease_expires_at < store.runs.now(conn))


def test_every_move_is_carried_exactly(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    store = app.store
    calls = {"flaky": 0}

    @app.job()
    def ok(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.job(max_attempts=1)
    def bad(ctx: fm.JobContext, payload: Any) -> None:
        raise fm.Reject("bad input")

    @app.job(max_attempts=2, backoff=NO_WAIT)
    def flaky(ctx: fm.JobContext, payload: Any) -> None:
        calls["flaky"] += 1
        raise RuntimeError("always")

    app.submit("ok", fm.RunRequest("seeded-before-the-count"))
    counted = store.count_runs()
    assert counted.counts == real_count(store)
    allowed = forbid_counting(monkeypatch)

    app.submit("ok", *[fm.RunRequest(f"ok-{n}") for n in range(5)])
    app.submit("ok", fm.RunRequest("ok-1"))  # a duplicate: nothing moves
    app.submit("bad", fm.RunRequest("bad-1"), fm.RunRequest("bad-2"))
    app.submit("flaky", fm.RunRequest("flaky-1"))
    counted = carried(store, counted)

    app.work(until_idle=True, jobs=["ok", "bad", "flaky"])
    assert calls["flaky"] == 2  # retried once, then dead
    counted = carried(store, counted)
    assert counted.counts["flaky"] == {RunStatus.DEAD: 1}

    first, second = app.submit("ok", fm.RunRequest("c-1"), fm.RunRequest("c-2")).run_ids
    (running,) = store.claim(worker_id="w", jobs=["ok"], limit=1, lease_seconds=30)
    queued = second if running.id == first else first
    counted = carried(store, counted)
    assert app.cancel(queued) is not None and app.cancel(running.id) is not None
    counted = carried(store, counted)

    assert len(app.retry(job="bad")) == 2 and len(app.retry(job="flaky")) == 1
    counted = carried(store, counted)
    app.work(until_idle=True, jobs=["ok", "bad", "flaky"])
    counted = carried(store, counted)

    # A worker that crashed: its lease expires and another worker takes the run over.
    (taken,) = app.submit("ok", fm.RunRequest("crash-1")).run_ids
    store.claim(worker_id="crashed", jobs=["ok"], limit=1, lease_seconds=0.3)
    counted = carried(store, counted)
    wait_until(lambda: lease_expired(store, taken), what="the lease to expire")
    assert [r.id for r in store.claim(worker_id="w", jobs=["ok"], limit=1, lease_seconds=30)] == [
        taken
    ]
    counted = carried(store, counted)

    # On its last attempt, a lease that expires kills the run.
    (last,) = app.submit("bad", fm.RunRequest("crash-2")).run_ids
    store.claim(worker_id="crashed", jobs=["bad"], limit=1, lease_seconds=0.3)
    wait_until(lambda: lease_expired(store, last), what="the lease to expire")
    store.claim(worker_id="w", jobs=["bad"], limit=1, lease_seconds=30)  # settles the expiry
    counted = carried(store, counted)
    assert store.get_run(last).status is RunStatus.DEAD  # type: ignore[union-attr]

    assert store.prune_runs(0).runs > 0
    # SQLite hands the id of a pruned newest log row out again: it counts once more.
    allowed["count"] = store.backend.engine.dialect.name == "sqlite"
    counted = carried(store, counted)
    allowed["count"] = False
    app.submit("ok", fm.RunRequest("after-the-prune"))
    counted = carried(store, counted)

    store.save_run_count(counted)
    saved = store.saved_run_count()
    assert saved is not None and (saved.counts, saved.event_id) == (
        counted.counts,
        counted.event_id,
    )
    app.submit("ok", fm.RunRequest("after-the-save"))
    carried(store, saved)


def test_a_tally_saved_without_a_run_id_counts_again(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tally saved before it kept the newest run id cannot tell which runs are new."""
    app = make_app()

    @app.job()
    def ok(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("ok", fm.RunRequest("before"))
    counted = app.store.count_runs()
    old = dataclasses.replace(counted, run_id=None, runs_pending=())
    loaded = RunCount.from_row(0, old.to_json(), old.at)
    assert loaded.run_id is None
    allowed = forbid_counting(monkeypatch)
    app.submit("ok", fm.RunRequest("after"))
    allowed["count"] = True
    counted = carried(app.store, loaded)
    assert counted.counts == {"ok": {RunStatus.QUEUED: 2}} and counted.run_id is not None


@pytest.mark.parametrize("store_url", ["postgres", "mariadb"], indirect=True)
def test_a_run_committed_after_a_newer_one_is_counted_once(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit holds its transaction open while a later one commits: the tally read
    meanwhile includes the newer run (its id above the older's) and not the older;
    the next includes both. A submit logs nothing: runs are found by their ids."""
    app = make_app()

    @app.job()
    def ok(ctx: fm.JobContext, payload: Any) -> None:
        pass

    store = app.store
    counted = store.count_runs()
    forbid_counting(monkeypatch)
    inserted = threading.Event()
    release = threading.Event()
    slow_ids: list[int] = []

    def slow_submit() -> None:
        with store.write("a slow submit") as conn:
            slow_ids.extend(
                store.enqueue(
                    [NewRun(job="ok", run_key="slow", payload_json="{}", max_attempts=1)], conn
                ).run_ids
            )
            inserted.set()
            release.wait(30)

    slow = threading.Thread(target=slow_submit)
    slow.start()
    try:
        assert inserted.wait(30)
        (quick,) = app.submit("ok", fm.RunRequest("quick")).run_ids  # newer id, committed first
        assert quick > slow_ids[0]
        counted = carried(store, counted)
        assert counted.counts == {"ok": {RunStatus.QUEUED: 1}}
        assert counted.run_id == quick
        assert any(lo <= slow_ids[0] <= hi for lo, hi, _ in counted.runs_pending)
    finally:
        release.set()
        slow.join(30)
    counted = carried(store, counted)
    assert counted.counts == {"ok": {RunStatus.QUEUED: 2}}
    counted = carried(store, counted)  # and never twice
    assert counted.counts == {"ok": {RunStatus.QUEUED: 2}}
    assert not any(lo <= slow_ids[0] <= hi for lo, hi, _ in counted.runs_pending)
    # Saved and loaded, the run id and the ranges still missing are kept.
    store.save_run_count(counted)
    saved = store.saved_run_count()
    assert saved is not None
    assert (saved.run_id, saved.runs_pending) == (counted.run_id, counted.runs_pending)


@pytest.mark.parametrize("store_url", ["postgres", "mariadb"], indirect=True)
def test_a_log_row_committed_after_a_newer_one_is_counted_once(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry by hand holds its transaction open while a cancel commits: the tally read
    meanwhile includes the cancel's newer log row and not the retry's; the next both."""
    app = make_app()

    @app.job(max_attempts=1)
    def bad(ctx: fm.JobContext, payload: Any) -> None:
        raise fm.Reject("bad input")

    store = app.store
    (dead,) = app.submit("bad", fm.RunRequest("dead")).run_ids
    app.work(until_idle=True, jobs=["bad"])
    (queued,) = app.submit("bad", fm.RunRequest("queued")).run_ids
    counted = store.count_runs()
    assert counted.counts == {"bad": {RunStatus.FAILED: 1, RunStatus.QUEUED: 1}}
    forbid_counting(monkeypatch)
    logged = threading.Event()
    release = threading.Event()

    def slow_retry() -> None:
        with store.write("a slow retry") as conn:
            assert store.runs.requeue(conn, run_ids=[dead], statuses=[RunStatus.FAILED])
            logged.set()
            release.wait(30)

    slow = threading.Thread(target=slow_retry)
    slow.start()
    try:
        assert logged.wait(30)
        assert app.cancel(queued) is not None  # a newer log id, committed first
        counted = carried(store, counted)
        assert counted.counts == {"bad": {RunStatus.FAILED: 1, RunStatus.CANCELLED: 1}}
        assert counted.pending  # the slow retry's log row, on its way
    finally:
        release.set()
        slow.join(30)
    started = time.monotonic()
    counted = carried(store, counted)
    assert counted.counts == {"bad": {RunStatus.QUEUED: 1, RunStatus.CANCELLED: 1}}
    assert time.monotonic() - started < 30
