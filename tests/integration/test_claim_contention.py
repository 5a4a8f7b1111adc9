"""Four worker processes compete for 20,000 runs on one PostgreSQL store.

Each job writes its effect (when it started, when it committed, which worker
and lease) through ``ctx.transaction()``. No run may be handed to two workers
at once or one after the other, and every run must succeed exactly once. A
run executed twice would show up in the workers' reports (a second execution
cannot commit: ``lease_lost``), in the processing log (a second claim) or in
the effects table (a second row).
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import run_events, runs
from tests.crash.support import read_report, start_worker, status_counts, stop
from tests.crash.worker_main import build_app, effects, metadata
from tests.helpers import wait_until

PROCESSES = 4
RUNS_PER_PROCESS = 5_000
RUNS = PROCESSES * RUNS_PER_PROCESS


def scalar(conn: sa.Connection, sql: str) -> object:
    return conn.execute(sa.text(sql)).scalar_one()


@pytest.mark.postgres
@pytest.mark.timeout(150)
def test_no_run_is_executed_by_two_workers(pg_url: str, tmp_path: Path) -> None:
    app = build_app(pg_url, lease_seconds=30)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        metadata.create_all(app.engine)
        app.submit("contention", *(fm.RunRequest(f"run-{i:05d}") for i in range(RUNS)))

        start_line = tmp_path / "go"
        for index in range(PROCESSES):
            processes.append(
                start_worker(
                    pg_url,
                    tmp_path / f"worker-{index}.log",
                    "--concurrency",
                    "8",
                    "--prefetch",
                    "24",
                    "--claim-batch",
                    "32",
                    "--until-idle",
                    "--ready",
                    str(tmp_path / f"ready-{index}"),
                    "--start-after",
                    str(start_line),
                    "--report",
                    str(tmp_path / f"report-{index}.json"),
                )
            )
        # All four start claiming together, for as much contention as possible.
        wait_until(
            lambda: all((tmp_path / f"ready-{i}").exists() for i in range(PROCESSES)),
            what="the workers to open the store",
        )
        start_line.touch()
        for index, process in enumerate(processes):
            log = tmp_path / f"worker-{index}.log"
            assert process.wait(timeout=120) == 0, log.read_text()
        reports = [read_report(tmp_path / f"report-{i}.json") for i in range(PROCESSES)]

        assert status_counts(app) == {"succeeded": RUNS}
        assert sum(r["claimed"] for r in reports) == RUNS
        assert sum(r["succeeded"] for r in reports) == RUNS
        assert [(r["lease_lost"], r["released"], r["errors"]) for r in reports] == [
            (0, 0, [])
        ] * PROCESSES
        # Every process took part in the competition.
        assert all(r["claimed"] > 0 for r in reports), [r["claimed"] for r in reports]

        with app.store.read("checking effects") as conn:
            # No two executions of one run overlap in time...
            overlapping = scalar(
                conn,
                f"""
                SELECT count(*) FROM {effects.name} a JOIN {effects.name} b
                  ON a.run_key = b.run_key AND a.id < b.id
                 AND a.started_at <= b.finished_at AND b.started_at <= a.finished_at
                """,
            )
            assert overlapping == 0
            # ... indeed each run's effect was applied exactly once,
            assert scalar(conn, f"SELECT count(*) FROM {effects.name}") == RUNS
            assert scalar(conn, f"SELECT count(DISTINCT run_key) FROM {effects.name}") == RUNS
            # and every process did its share.
            assert (
                scalar(conn, f"SELECT count(DISTINCT worker_pid) FROM {effects.name}") == PROCESSES
            )

            # The processing log agrees: per run, one claim (with its own lease
            # token), one success by the claimant under that token, nothing else.
            # (A submit stores no row: the run's row says it was requested.)
            kinds = conn.execute(sa.select(run_events.c.kind).distinct()).scalars()
            assert set(kinds) == {"claimed", "succeeded"}
            per_run = conn.execute(
                sa.select(
                    run_events.c.run_id,
                    sa.func.count().filter(run_events.c.kind == "claimed").label("claims"),
                    sa.func.count(sa.distinct(run_events.c.lease_token))
                    .filter(run_events.c.kind == "claimed")
                    .label("claim_tokens"),
                    sa.func.count().filter(run_events.c.kind == "succeeded").label("successes"),
                ).group_by(run_events.c.run_id)
            ).all()
            assert len(per_run) == RUNS
            assert {(r.claims, r.claim_tokens, r.successes) for r in per_run} == {(1, 1, 1)}
            mismatched = scalar(
                conn,
                f"""
                SELECT count(*) FROM {run_events.name} c
                JOIN {run_events.name} s ON s.run_id = c.run_id AND s.kind = 'succeeded'
                WHERE c.kind = 'claimed'
                  AND (s.worker_id, s.lease_token) IS DISTINCT FROM (c.worker_id, c.lease_token)
                """,
            )
            assert mismatched == 0
            unclaimed_effects = scalar(
                conn,
                f"""
                SELECT count(*) FROM {effects.name} e
                JOIN {runs.name} r ON r.run_key = e.run_key
                LEFT JOIN {run_events.name} c ON c.run_id = r.id AND c.kind = 'claimed'
                  AND c.worker_id = e.worker_id AND c.lease_token = e.lease_token
                WHERE c.id IS NULL
                """,
            )
            assert unclaimed_effects == 0
    finally:
        for process in processes:
            stop(process)
        app.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store_fixture", ["pg_url", "mariadb_url"])
def test_a_claim_passes_over_the_runs_another_claim_has_locked(
    store_fixture: str, request: pytest.FixtureRequest
) -> None:
    """One claim's transaction is still open on the first run when a second claim
    comes: the second takes the next run at once, rather than waiting for the
    first to commit and then leasing the same run again."""
    app = fm.App(request.getfixturevalue(store_fixture))

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    first, second = app.submit("load", fm.RunRequest("r0"), fm.RunRequest("r1")).run_ids
    store = app.store
    taken: list[int] = []
    later = threading.Thread(
        target=lambda: taken.extend(
            run.id for run in store.claim(worker_id="B", jobs=["load"], limit=1, lease_seconds=60)
        )
    )
    try:
        with store.write("claiming in a transaction held open") as conn:
            held = store.leases.claim(conn, worker_id="A", jobs=["load"], limit=1, lease_seconds=60)
            assert [run.id for run in held] == [first]
            later.start()
            # Bounded, not a pause: the claim should be back at once; one that
            # waits for this transaction comes back only once it commits.
            later.join(timeout=30)
            answered_while_held = not later.is_alive()
        later.join()
        assert answered_while_held, "the second claim waited for the first one's lock"
        assert taken == [second]
        runs_now = {run.id: run for run in app.get_runs(job="load")}
        assert (runs_now[first].lease_owner, runs_now[first].attempt) == ("A", 1)
        assert (runs_now[second].lease_owner, runs_now[second].attempt) == ("B", 1)
    finally:
        app.close()
