"""Runs found by the worker that claimed them: a stopped worker's runs are read
from the part of the processing log written while it lived, and nothing of
them is missed; a worker the store has no row for is looked up in the whole log."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import run_search
from ferryman.store.run_search import CLAIM_SKEW, RunFilter, _first_claim_at
from ferryman.store.schema import run_events, runs, workers

HOUR = 3600.0


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
    # claimed without registering (the store's own callers may): the whole log is read
    by_unregistered = _claim(app, "unregistered", 3)

    assert _found(app, "first") == by_first
    assert _found(app, "second") == by_second  # alive: from its start to the newest row
    assert _found(app, "unregistered") == by_unregistered
    assert _found(app, "nobody") == []

    app.store.register_worker(worker_id="idle", host="h", pid=3, jobs=["load"])
    app.store.worker_stopped("idle")
    assert _found(app, "idle") == []


def test_a_stopped_workers_runs_come_from_its_lifetime_and_none_is_missed(
    make_app: type[fm.App],
) -> None:
    """Three workers, each alive for an hour a day apart, claimed runs in turn; a
    success written in a long transaction carries that transaction's older start
    amid later claims, and must not cut any worker's range short."""
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
            old = days["day-0"] - CLAIM_SKEW * 2
            conn.execute(run_events.insert().values(kind="succeeded", at=old, **log))
            claimed_by[name].append(run_id)

    for name, expected in claimed_by.items():
        assert _found(app, name) == sorted(expected)


def test_the_first_claim_after_a_moment_is_found_however_claims_bunch(
    make_app: type[fm.App],
) -> None:
    """Claims in bursts and lulls, other rows among them: the search finds exactly the
    first claim at or after each moment, as reading every claim would."""
    app = _app(make_app)
    (run_id,) = app.submit("load", fm.RunRequest("k")).run_ids
    rng = random.Random(5)
    at, claims = 1_000_000.0, []
    with app.engine.begin() as conn:
        for n in range(400):
            at += rng.choice([0.0, 0.001, 0.5, 30.0, 3600.0]) if n % 50 else 86400.0
            log = {"run_id": run_id, "attempt": 1, "worker_id": "w", "lease_token": 1}
            if rng.random() < 0.3:  # a row of another kind, at a time of its own
                conn.execute(run_events.insert().values(kind="succeeded", at=rng.random(), **log))
            claims.append(
                (
                    conn.execute(
                        run_events.insert().values(kind="claimed", at=at, **log)
                    ).inserted_primary_key[0],
                    at,
                )
            )
        moments = [rng.uniform(claims[0][1] - 10, claims[-1][1] + 10) for _ in range(60)]
        moments += [at for _, at in claims[::37]]
        for moment in moments:
            expected = next((i for i, t in claims if t >= moment), None)
            assert _first_claim_at(conn, moment) == expected, moment


def _pages(app: fm.App, worker: str, *, after_id: int | None = None) -> list[int]:
    """Every id the search lists for ``worker``, page by page: newest first from the
    newest, or, from ``after_id``, oldest first (each page is newest first)."""
    seen: list[int] = []
    before: int | None = None
    after = after_id
    while True:
        page = app.store.search_runs(
            RunFilter(worker=worker), before_id=before, after_id=after, limit=5
        )
        if after_id is None:
            seen += [run.id for run in page.items]
            before = page.next_before
            if before is None:
                return seen
        else:
            seen += [run.id for run in reversed(page.items)]
            after = page.previous_after
            if after is None:
                return seen


def test_a_workers_newest_claims_are_read_first_and_no_run_is_missed(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs created five minutes apart (out of id order by up to ``CLAIM_SKEW``), each
    claimed within minutes by one of two workers (log rows out of time order as much),
    some claimed again hours later: every page, read from the newest claims back window
    by window, lists exactly the runs the worker claimed."""
    monkeypatch.setattr(run_search, "CLAIM_WINDOW", 4)
    app = _app(make_app)
    ids = sorted(app.submit("load", *(fm.RunRequest(f"k{n}") for n in range(300))).run_ids)
    rng = random.Random(11)
    base = app.store.now() - 400 * 300.0
    claims: list[tuple[float, float, int, str]] = []  # (order, at, run id, worker)
    with app.engine.begin() as conn:
        for n, run_id in enumerate(ids):
            created = base + n * 300.0 + rng.uniform(-CLAIM_SKEW / 2, CLAIM_SKEW / 2)
            conn.execute(runs.update().where(runs.c.id == run_id).values(created_at=created))
            for _ in range(1 if rng.random() < 0.8 else 2):
                late = rng.random() < 0.1  # claimed again long after
                at = created + rng.uniform(0, 30_000 if late else 300)
                order = at + rng.uniform(-CLAIM_SKEW / 2, CLAIM_SKEW / 2)
                claims.append((order, at, run_id, rng.choice(["stopped", "alive"])))
        ended = max(at for _, at, _, _ in claims) + 60
        for name, stopped in (("stopped", ended), ("alive", None)):
            conn.execute(_registered(name, base - 60, seen=ended, stopped=stopped))
        for _, at, run_id, name in sorted(claims):
            log = {"run_id": run_id, "attempt": 1, "worker_id": name, "lease_token": 1}
            conn.execute(run_events.insert().values(kind="claimed", at=at, **log))

    for name in ("stopped", "alive"):
        expected = sorted({run_id for _, _, run_id, who in claims if who == name}, reverse=True)
        assert _pages(app, name) == expected
        anchor = ids[len(ids) // 2]
        assert _pages(app, name, after_id=anchor) == sorted(i for i in expected if i > anchor)
