"""Batched submits that meet keys submitted before: one run per key, whatever the order.

On PostgreSQL a batch is first written as if every key were new (a plain
insert, ``ENQUEUE_MANY_NEW``); a key that exists fails that statement and the
batch is written again with ``ON CONFLICT``. These pin that the outcome is the
one a deduplicating insert gives: nothing doubled, nothing lost, the ids of
the runs that existed, one ``requested`` event per run (shown from the run's
row: a submit stores no log row).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.keys import concurrency_key_digest
from ferryman.store.schema import run_events, runs
from tests.helpers import wait_until


def _requested_per_run(app: fm.App) -> dict[int, int]:
    """``requested`` events per run in each run's log; none of them stored."""
    with app.engine.connect() as conn:
        stored = conn.scalar(
            sa.select(sa.func.count())
            .select_from(run_events)
            .where(run_events.c.kind == "requested")
        )
    assert stored == 0
    return {
        run.id: sum(event.kind is fm.RunEventKind.REQUESTED for event in app.get_run_events(run.id))
        for run in app.get_runs()
    }


def test_single_submits_repeating_keys_create_only_the_new_ones(make_app: type[fm.App]) -> None:
    """One run per submit, keys new and repeated in turn: on PostgreSQL a new key
    goes in as a plain insert, a repeated one fails it and is deduplicated."""
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    first = [app.submit("load", fm.RunRequest(f"k{i}", {"v": 1})) for i in range(3)]
    again = [app.submit("load", fm.RunRequest(f"k{i}", {"v": 2})) for i in (2, 0)]
    fresh = app.submit("load", fm.RunRequest("n0", {"v": 3}))
    repeated = app.submit("load", fm.RunRequest("n0", {"v": 4}))
    after = app.submit("load", fm.RunRequest("n1", {"v": 5}))

    assert [each.created for each in [*first, *again, fresh, repeated, after]] == [
        1, 1, 1, 0, 0, 1, 0, 1
    ]  # fmt: skip
    assert [each.run_ids for each in again] == [first[2].run_ids, first[0].run_ids]
    assert repeated.run_ids == fresh.run_ids
    by_key = {run.run_key: run.payload["v"] for run in app.get_runs(job="load")}
    assert by_key == {"k0": 1, "k1": 1, "k2": 1, "n0": 3, "n1": 5}
    assert _requested_per_run(app) == {run.id: 1 for run in app.get_runs()}


def test_batches_repeating_some_keys_create_only_the_new_ones(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    first = app.submit("load", *[fm.RunRequest(f"k{i}", {"v": 1}) for i in range(5)])
    mixed = app.submit("load", *[fm.RunRequest(f"k{i}", {"v": 2}) for i in range(3, 8)])
    assert (first.created, mixed.created, mixed.deduplicated) == (5, 3, 2)
    assert mixed.run_ids[:2] == first.run_ids[3:]  # k3, k4: the runs that existed
    repeated = app.submit("load", *[fm.RunRequest(f"k{i}", {"v": 3}) for i in range(8)])
    assert (repeated.created, repeated.deduplicated) == (0, 8)
    assert repeated.run_ids == first.run_ids + mixed.run_ids[2:]
    fresh = app.submit("load", *[fm.RunRequest(f"n{i}", {"v": 4}) for i in range(4)])
    assert fresh.created == 4

    by_key = {run.run_key: run for run in app.get_runs(job="load")}
    assert sorted(by_key) == sorted([f"k{i}" for i in range(8)] + [f"n{i}" for i in range(4)])
    assert [by_key[f"k{i}"].payload for i in range(8)] == [{"v": 1}] * 5 + [{"v": 2}] * 3
    assert _requested_per_run(app) == {run.id: 1 for run in by_key.values()}


@pytest.mark.parametrize("other_commits", [True, False])
@pytest.mark.parametrize("keys", [[f"k{i}" for i in range(6)], ["k3"]], ids=["batch", "one"])
def test_a_batch_waiting_on_a_key_another_transaction_writes_dedupes_against_it(
    pg_url: str, other_commits: bool, keys: list[str]
) -> None:
    """The batch blocks on the other transaction's key; once that commits the
    batch takes its run, once it rolls back the batch creates the run itself.
    A submit of one run (``ENQUEUE_ONE_NEW`` first, too) behaves the same."""
    app, other = fm.App(pg_url), fm.App(pg_url)
    for each in (app, other):

        @each.job
        def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    outcome: list[fm.SubmitResult] = []
    with other.engine.connect() as conn:
        transaction = conn.begin()
        held = other.submit("load", fm.RunRequest("k3", {"from": 0}), conn=conn)
        holder_pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        batch = threading.Thread(
            target=lambda: outcome.append(
                app.submit("load", *[fm.RunRequest(key, {"from": 1}) for key in keys])
            )
        )
        batch.start()

        def batch_waits_on_the_key() -> bool:
            with other.engine.connect() as watcher:
                return bool(
                    watcher.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = "
                        "'transactionid' AND transactionid = (SELECT transactionid FROM "
                        f"pg_locks WHERE pid = {holder_pid} AND locktype = 'transactionid')"
                    ).scalar_one()
                )

        wait_until(batch_waits_on_the_key, what="the batch waiting on k3")
        if other_commits:
            transaction.commit()
        else:
            transaction.rollback()
        batch.join()

    (submitted,) = outcome
    by_key = {run.run_key: run for run in app.get_runs(job="load")}
    assert sorted(by_key) == keys
    assert submitted.run_ids == tuple(by_key[key].id for key in keys)
    if other_commits:
        assert (submitted.created, submitted.deduplicated) == (len(keys) - 1, 1)
        assert by_key["k3"].id == held.run_ids[0]
        assert by_key["k3"].payload == {"from": 0}
    else:
        assert (submitted.created, submitted.deduplicated) == (len(keys), 0)
        assert by_key["k3"].payload == {"from": 1}
    assert _requested_per_run(app) == {run.id: 1 for run in by_key.values()}
    with app.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(runs)) == len(keys)
    app.close()
    other.close()


def test_each_run_of_a_batch_keeps_its_own_options_and_alike_runs_share_theirs(
    make_app: type[fm.App],
) -> None:
    """On PostgreSQL a batch of one job's runs with the same options sends those
    once (``ENQUEUE_ALIKE``), any other batch per run; both write what was asked."""
    app = make_app()

    @app.job(max_attempts=2, key_concurrency=1)
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    @app.job(max_attempts=7)
    def store(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    later = datetime.now(UTC) + timedelta(days=3)
    app.submit("load", fm.RunRequest("first", concurrency_key="c"))  # marks the job keyed
    alike = [
        fm.RunRequest(f"a{i}", {"i": i}, priority=5, not_before=later, concurrency_key="c")
        for i in range(4)
    ]
    app.submit("load", *alike)
    app.submit(
        "load",
        fm.RunRequest("m0", {"i": 0}, priority=1),
        fm.RunRequest("m1", {"i": 1}, not_before=later, concurrency_key="d"),
        fm.RunRequest("m2", {"i": 2}, job="store", priority=-3),
    )

    by_key = {run.run_key: run for run in app.get_runs()}
    seen = {
        key: (r.job, r.payload, r.priority, r.max_attempts, r.concurrency_key, r.available_at)
        for key, r in by_key.items()
        if key != "first"
    }
    created = {key: by_key[key].created_at for key in seen}
    assert seen == {
        **{f"a{i}": ("load", {"i": i}, 5, 2, "c", later) for i in range(4)},
        "m0": ("load", {"i": 0}, 1, 2, None, created["m0"]),
        "m1": ("load", {"i": 1}, 0, 2, "d", later),
        "m2": ("store", {"i": 2}, -3, 7, None, created["m2"]),
    }
    with app.engine.connect() as conn:
        digests = dict(conn.execute(sa.select(runs.c.run_key, runs.c.concurrency_digest)).all())
    assert {key: digests[key] for key in ("a0", "a3", "m1", "m2")} == {
        "a0": concurrency_key_digest("c"),
        "a3": concurrency_key_digest("c"),
        "m1": concurrency_key_digest("d"),
        "m2": None,
    }
