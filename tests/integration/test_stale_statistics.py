"""The worker's statements on PostgreSQL cost the same per run whatever the planner believes.

A queue's table is often analysed while idle: its statistics then say that
no run is running, however many are by the time a worker writes their
successes. A statement whose plan followed those statistics would walk
every running run once for each success. These tests force the plan a
prepared statement gets once PostgreSQL stops planning it for its values
(``plan_cache_mode = force_generic_plan``), with such statistics, and count
the rows it reads (EXPLAIN ANALYZE, rolled back).
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.postgres_leases import SUCCEED_COMMITTED
from ferryman.store.run_rows import ClaimedRun, Outcome, OutcomeKind
from ferryman.store.schema import runs

FINISHED = 20_000  # runs that succeeded before the statistics were taken
RUNNING = 600  # runs claimed, and so running, when the successes are written
BATCH = 200  # successes written in one statement
# The statement with its parameters numbered, for PREPARE: a plan EXPLAIN makes for
# given values is always the custom one.
AS_PREPARED = (
    SUCCEED_COMMITTED.replace("%(ids)b", "$1")
    .replace("%(tokens)b", "$2")
    .replace("%(worker)s", "$3")
)


def noop(ctx: fm.JobContext, payload: object) -> None: ...


def success_of(run: ClaimedRun) -> Outcome:
    return Outcome(kind=OutcomeKind.SUCCEEDED, lease=run.lease, attempt=run.attempt)


def rows_read(node: dict[str, Any]) -> int:
    """Rows of the runs table a plan's nodes read, and rows its joins compared and dropped."""
    own = node.get("Rows Removed by Join Filter", 0) * node["Actual Loops"]
    if node.get("Relation Name") == runs.name and node["Node Type"] != "ModifyTable":
        own += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return own + sum(rows_read(child) for child in node.get("Plans", ()))


def test_a_batch_of_successes_reads_each_run_by_its_key_whatever_the_statistics(
    pg_url: str,
) -> None:
    app = fm.App(pg_url)
    try:
        app.job(name="load")(noop)
        app.submit("load", *(fm.RunRequest(f"done-{i}") for i in range(FINISHED)))
        claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 60}
        while claimed := app.store.claim(limit=1000, **claim):  # type: ignore[arg-type]
            app.store.finish([success_of(run) for run in claimed], worker_id="w")
        app.submit("load", *(fm.RunRequest(f"run-{i}") for i in range(RUNNING)))
        with app.store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))  # no run is running
        claimed = app.store.claim(limit=RUNNING, **claim)  # type: ignore[arg-type]
        assert len(claimed) == RUNNING
        batch = claimed[:BATCH]
        ids, tokens = [run.id for run in batch], [run.lease_token for run in batch]
        with app.store.engine.connect() as conn, conn.begin() as transaction:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE succeed (bigint[], bigint[], text) AS {AS_PREPARED}")
            # EXECUTE's arguments as literals (a client-side cursor): a utility
            # statement's parameters have no type the server could infer.
            literal = psycopg.ClientCursor(cursor.connection)
            explain = "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE succeed (%s, %s, %s)"
            literal.execute(explain, (ids, tokens, "w"))
            ((plan,),) = literal.fetchall()
            transaction.rollback()
        # Each run of the batch found by its key, then updated: not each running
        # run compared with each success (RUNNING * BATCH).
        assert rows_read(plan[0]["Plan"]) <= 3 * BATCH

        # And the statement does what it did: the batch succeeded, and only it.
        with app.store.engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(SUCCEED_COMMITTED, {"ids": ids, "tokens": tokens, "worker": "w"})
            succeeded = sorted(row[0] for row in cursor.fetchall())
        assert succeeded == sorted(run.id for run in batch)
        statuses = {run.id: run.status for run in app.get_runs(job="load")}
        assert sum(status is fm.RunStatus.SUCCEEDED for status in statuses.values()) == (
            FINISHED + BATCH
        )
        assert all(statuses[run.id] is fm.RunStatus.SUCCEEDED for run in batch)
    finally:
        app.close()
