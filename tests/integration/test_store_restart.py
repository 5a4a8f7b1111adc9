"""PostgreSQL failing under a working worker: nothing lost, nothing doubled, no attempt used.

The database is a private cluster (``tests/private_pg.py``) restarted with
``pg_ctl restart -m fast`` and then ``-m immediate`` while a worker runs 400
runs, each allowed one attempt, whose job writes its effect through
``ctx.transaction()``: an attempt the outage cut short must be given back, so
a single counted attempt lost to it would leave a run ``dead``. And a proxy
(``tests/pg_proxy.py``) loses the answer to a claim's commit, the moment of an
outage where the store did what the worker was told failed.
"""

from __future__ import annotations

import threading

import psycopg
import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import upgrade
from ferryman.worker import Worker
from tests.helpers import wait_until
from tests.pg_proxy import LostCommitAnswer
from tests.private_pg import PrivateCluster

RUNS = 400


def effects_so_far(url: str) -> int:
    """Effect rows committed so far; 0 while the database is down."""
    try:
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM effects").fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return 0


def all_ended(app: fm.App) -> bool:
    (summary,) = app.store.summary(["load"])
    return sum(n for status, n in summary.counts.items() if status.is_final) == RUNS


@pytest.mark.timeout(120)
def test_postgres_restarts_mid_run_lose_double_and_use_up_nothing(
    private_pg: PrivateCluster,
) -> None:
    url = private_pg.create_database("ferryman")
    upgrade(url)
    app = fm.App(url)

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            conn.execute(sa.text("INSERT INTO effects VALUES (:k)"), {"k": ctx.run_key})
            # Some work inside the transaction, so that each restart finds
            # transactions open, as a real load would.
            conn.execute(sa.text("SELECT pg_sleep(0.01)"))

    try:
        with app.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE effects (run_key TEXT NOT NULL)"))
        app.submit("load", *(fm.RunRequest(f"r-{i:03}") for i in range(RUNS)))
        worker = Worker(app.store, app.jobs, lease_seconds=30, concurrency=4)
        thread = threading.Thread(target=lambda: worker.run(handle_signals=False))
        thread.start()
        try:
            wait_until(lambda: effects_so_far(url) >= 100, what="100 effects")
            private_pg.restart("fast")
            wait_until(lambda: effects_so_far(url) >= 250, what="250 effects")
            private_pg.restart("immediate")
            wait_until(lambda: all_ended(app), timeout=60, what="every run to end")
        finally:
            worker.stop()
            thread.join(60)
        assert not thread.is_alive()

        runs = app.get_runs(job="load")
        assert len(runs) == RUNS
        assert {(run.status, run.attempt) for run in runs} == {(fm.RunStatus.SUCCEEDED, 1)}
        with app.engine.begin() as conn:
            counts = dict(
                conn.execute(
                    sa.text("SELECT run_key, count(*) FROM effects GROUP BY run_key")
                ).all()
            )
        assert sorted(counts) == sorted(run.run_key for run in runs)  # none lost
        assert set(counts.values()) == {1}  # none doubled
        # The restarts did cut attempts short, and each was given back.
        given_back = [
            event
            for run in runs
            for event in app.get_run_events(run.id)
            if event.kind is fm.RunEventKind.RELEASED
        ]
        assert given_back, "no attempt was cut short: the restarts tested nothing"
        assert all("the store failed" in str(e.detail.get("reason")) for e in given_back)
        assert worker.report.dead == 0 and worker.report.released == len(given_back)
    finally:
        app.close()


@pytest.mark.postgres
def test_a_claim_whose_answer_is_lost_uses_no_attempt(pg_url: str) -> None:
    database = sa.make_url(pg_url).database
    assert database is not None
    # The claim is one prepared statement in autocommit, locking with SKIP
    # LOCKED: its execution, right after its text, commits; its answer is lost.
    with LostCommitAnswer(("127.0.0.1", 5432), arm=b"SKIP LOCKED", lose=b"") as proxy:
        app = fm.App(proxy.url(database), lease_seconds=30)

        @app.job(max_attempts=1)
        def load(ctx: fm.JobContext, payload: object) -> None:
            with ctx.transaction() as conn:
                conn.execute(sa.text("INSERT INTO effects VALUES (:k)"), {"k": ctx.run_key})

        try:
            with app.engine.begin() as conn:
                conn.execute(sa.text("CREATE TABLE effects (run_key TEXT NOT NULL)"))
            ids = app.submit("load", *(fm.RunRequest(f"r-{i:02}") for i in range(20))).run_ids
            report = app.work(until_idle=True, handle_signals=False, concurrency=2)

            assert proxy.fired.is_set()
            runs = [app.get_run(run_id) for run_id in ids]
            # Without a release, the runs of the lost claim would sit `running` until
            # their leases expired, then end dead with the attempt counted.
            assert [(r.status, r.attempt) for r in runs if r is not None] == [
                (fm.RunStatus.SUCCEEDED, 1)
            ] * 20
            lost = [
                run_id
                for run_id in ids
                if "released" in [e.kind.value for e in app.get_run_events(run_id)]
            ]
            assert lost and report.released == len(lost)
            with app.engine.begin() as conn:
                keys = conn.execute(sa.text("SELECT run_key FROM effects")).scalars().all()
            assert sorted(keys) == [f"r-{i:02}" for i in range(20)]
        finally:
            app.close()
