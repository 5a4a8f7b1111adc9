"""Runs found by the worker that claimed them: its claims are read from the
processing log's index by worker, newest first a window at a time, and
nothing of them is missed, whether the store has a row for the worker or not."""

from __future__ import annotations

import random
from collections.abc import Iterator

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.run_search import RunFilter
from ferryman.store.schema import run_events, runs, workers

HOUR = 3600.0
SKEW = 600.0  # seconds claims and run ids may be out of step by


def _app(make_app: type[fm.App]) -> fm.App:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    return app


def _found(app: fm.App, worker: str) -> list[int]:
    return sorted(run.id for run in app.store.search_runs(RunFilter(worker=worker)).items)


def _claim(app: fm.App, worker: str, count: int) -> list[int]:
    claimed = app.store.claim(worker_id=worker, jobs=["load"], limit=count, lease_seconds=30)
    assert len(claimed) == count
    return sorted(run.id for run in claimed)


def _registered(worker: str, started: float, *, seen: float, stopped: float | None) -> sa.Insert:
    """The row a worker writes in ``ferryman_workers``: when it started, was last seen, stopped."""
    return workers.insert().values(
        id=worker,
        host="h",
        pid=1,
        jobs='["load"]',
        started_at=started,
        last_seen_at=seen,
        stopped_at=stopped,
    )


def test_each_worker_finds_the_runs_it_claimed(make_app: type[fm.App]) -> None:
    app = _app(make_app)
    app.submit("load", *(fm.RunRequest(f"k{n}") for n in range(9)))

    app.store.register_worker(worker_id="first", host="h", pid=1, jobs=["load"])
    by_first = _claim(app, "first", 3)
    app.store.worker_stopped("first")
    app.store.register_worker(worker_id="second", host="h", pid=2, jobs=["load"])
    by_second = _claim(app, "second", 3)
    # claimed without registering (the store's own callers may)
    by_unregistered = _claim(app, "unregistered", 3)

    assert _found(app, "first") == by_first
    assert _found(app, "second") == by_second  # alive: from its start to the newest row
    assert _found(app, "unregistered") == by_unregistered
    assert _found(app, "nobody") == []

    app.store.register_worker(worker_id="idle", host="h", pid=3, jobs=["load"])
    app.store.worker_stopped("idle")
    assert _found(app, "idle") == []


def test_a_worker_lists_the_runs_it_claimed_and_not_those_it_only_finished(
    make_app: type[fm.App],
) -> None:
    """Three workers, each alive for an hour a day apart, claimed runs in turn; each
    run's success is written by the next worker (a success committed long after its
    transaction began, at an old time and a late id): only the claims count."""
    app = _app(make_app)
    ids = app.submit("load", *(fm.RunRequest(f"k{n}") for n in range(60))).run_ids
    now = app.store.now()
    days = {"day-0": now - 3 * 24 * HOUR, "day-1": now - 2 * 24 * HOUR, "day-2": now - 24 * HOUR}
    claimed_by: dict[str, list[int]] = {name: [] for name in days}
    with app.engine.begin() as conn:
        for name, started in days.items():
            conn.execute(_registered(name, started, seen=started + HOUR, stopped=started + HOUR))
        for n, run_id in enumerate(ids):
            name = list(days)[n // 20]
            at = days[name] + (n % 20) * 60.0
            log = {"run_id": run_id, "attempt": 1, "worker_id": name, "lease_token": 1}
            conn.execute(run_events.insert().values(kind="claimed", at=at, **log))
            # a success committed long after its transaction began: an old time, a late id
            finisher = list(days)[(n // 20 + 1) % 3]
            old = days["day-0"] - 2 * HOUR
            success = {**log, "worker_id": finisher}
            conn.execute(run_events.insert().values(kind="succeeded", at=old, **success))
            claimed_by[name].append(run_id)

    for name, expected in claimed_by.items():
        assert _found(app, name) == sorted(expected)


def _pages(app: fm.App, found: RunFilter, *, after_id: int | None = None) -> Iterator[int]:
    """Every id the search lists, page by page: newest first from the newest, or,
    from ``after_id``, oldest first (each page is newest first)."""
    before: int | None = None
    after = after_id
    while True:
        page = app.store.search_runs(found, before_id=before, after_id=after, limit=5)
        if after_id is None:
            yield from (run.id for run in page.items)
            before = page.next_before
            if before is None:
                return
        else:
            yield from (run.id for run in reversed(page.items))
            after = page.previous_after
            if after is None:
                return


def test_a_workers_newest_claims_are_read_first_and_no_run_is_missed(
    make_app: type[fm.App],
) -> None:
    """Runs created five minutes apart (out of id order by up to ``SKEW``), each
    claimed within minutes by one of three workers (log rows out of time order as
    much; one worker the store has no row for), some claimed again hours later, each
    worker's successes among its claims: every page, read from the newest claims back
    window by window, lists exactly the runs the worker claimed, also narrowed by
    status, and in creation order within a time window."""
    app = _app(make_app)
    ids = sorted(app.submit("load", *(fm.RunRequest(f"k{n}") for n in range(300))).run_ids)
    rng = random.Random(11)
    base = app.store.now() - 400 * 300.0
    created_at: dict[int, float] = {}
    claims: list[tuple[float, float, int, str]] = []  # (order, at, run id, worker)
    names = ["stopped", "alive", "unregistered"]
    with app.engine.begin() as conn:
        for n, run_id in enumerate(ids):
            created = created_at[run_id] = base + n * 300.0 + rng.uniform(-SKEW / 2, SKEW / 2)
            status = "failed" if n % 3 == 0 else "queued"
            conn.execute(
                runs.update().where(runs.c.id == run_id).values(created_at=created, status=status)
            )
            for _ in range(1 if rng.random() < 0.8 else 2):
                late = rng.random() < 0.1  # claimed again long after
                at = created + rng.uniform(0, 30_000 if late else 300)
                order = at + rng.uniform(-SKEW / 2, SKEW / 2)
                claims.append((order, at, run_id, rng.choice(names)))
        ended = max(at for _, at, _, _ in claims) + 60
        for name, stopped in (("stopped", ended), ("alive", None)):
            conn.execute(_registered(name, base - 60, seen=ended, stopped=stopped))
        for _, at, run_id, name in sorted(claims):
            log = {"run_id": run_id, "attempt": 1, "worker_id": name, "lease_token": 1}
            conn.execute(run_events.insert().values(kind="claimed", at=at, **log))
            if rng.random() < 0.5:  # finished by the worker: a row of another kind
                conn.execute(run_events.insert().values(kind="succeeded", at=at + 1, **log))

    failed = {run_id for n, run_id in enumerate(ids) if n % 3 == 0}
    since, until = created_at[ids[60]], created_at[ids[240]]
    for name in names:
        expected = sorted({run_id for _, _, run_id, who in claims if who == name}, reverse=True)
        assert list(_pages(app, RunFilter(worker=name))) == expected
        anchor = ids[len(ids) // 2]
        later = sorted(i for i in expected if i > anchor)
        assert list(_pages(app, RunFilter(worker=name), after_id=anchor)) == later
        by_status = RunFilter(worker=name, status=fm.RunStatus.FAILED)
        assert list(_pages(app, by_status)) == [i for i in expected if i in failed]
        window = RunFilter(worker=name, since=since, until=until)
        within = [i for i in expected if since <= created_at[i] < until]
        by_creation = sorted(within, key=lambda i: (created_at[i], i), reverse=True)
        assert list(_pages(app, window)) == by_creation
