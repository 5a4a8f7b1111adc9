"""The store's statements on PostgreSQL cost the same whatever the planner believes.

A queue's table is often analysed while idle: its statistics then say that
no run is running, however many are by the time a worker writes how their
attempts ended. A statement whose plan followed those statistics would walk
every running run once for each outcome. These tests force the plan a
prepared statement gets once PostgreSQL stops planning it for its values
(``plan_cache_mode = force_generic_plan``), with such statistics, and count
the rows it reads (EXPLAIN ANALYZE, rolled back). A statement that compares
the status with a constant writes it out (``run_rows.status_is``): a generic
plan matches a partial index's predicate to the SQL text, never to a bound value.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.postgres_leases import END, SUCCEED_COMMITTED, end_params
from ferryman.store.run_rows import ClaimedRun, Outcome, OutcomeKind
from ferryman.store.schema import runs

FINISHED = 20_000  # runs that succeeded before the statistics were taken
RUNNING = 600  # runs claimed, and so running, when the outcomes are written
BATCH = 200  # outcomes written in one statement
LIMITED_FINISHED = 5_000  # as FINISHED, for a limited job
PREPARED = itertools.count()


def noop(ctx: fm.JobContext, payload: object) -> None: ...


def success_of(run: ClaimedRun) -> Outcome:
    return Outcome(kind=OutcomeKind.SUCCEEDED, lease=run.lease, attempt=run.attempt)


def rows_read(node: dict[str, Any]) -> int:
    """Rows of the runs table a plan's nodes read, and rows its joins compared and dropped."""
    own = node.get("Rows Removed by Join Filter", 0) * node["Actual Loops"]
    if node.get("Relation Name") == runs.name and node["Node Type"] != "ModifyTable":
        own += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
    return own + sum(rows_read(child) for child in node.get("Plans", ()))


def generic_plan(
    app: fm.App, statement: str, types: dict[str, str], params: dict[str, Any]
) -> dict[str, Any]:
    """The plan ``statement`` gets once prepared and planned generically, run on ``params``
    (rolled back). ``types``: each parameter's SQL type, in the order PREPARE numbers them."""
    numbers = {name: f"${number}" for number, name in enumerate(types, start=1)}
    prepared = re.sub(r"%\((\w+)\)[sb]", lambda match: numbers[match[1]], statement)
    with app.store.engine.connect() as conn, conn.begin() as transaction:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        # Named afresh each time: a prepared statement outlives the rollback, on a
        # pooled connection the next call may get.
        name = f"statement_{next(PREPARED)}"
        cursor.execute(f"PREPARE {name} ({', '.join(types.values())}) AS {prepared}")
        # EXECUTE's arguments as literals (a client-side cursor): a utility
        # statement's parameters have no type the server could infer.
        literal = psycopg.ClientCursor(cursor.connection)
        placeholders = ", ".join(f"%s::{sql_type}" for sql_type in types.values())
        explain = f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name} ({placeholders})"
        literal.execute(explain, [params[name] for name in types])
        ((plan,),) = literal.fetchall()
        transaction.rollback()
    return plan[0]["Plan"]  # type: ignore[no-any-return]


def write(app: fm.App, statement: str, params: dict[str, Any]) -> list[int]:
    """The ids ``statement`` returns, run on ``params`` and committed."""
    with app.store.engine.begin() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(statement, params)
        return sorted(row[0] for row in cursor.fetchall())


def running_unknown_to_statistics_with(
    pg_url: str, finished: int = FINISHED, **job_options: Any
) -> Iterator[tuple[fm.App, list[ClaimedRun]]]:
    """A store with ``finished`` runs of job ``load`` finished and RUNNING runs running (the
    batch's first), analysed with none running; ``job_options`` as ``app.job`` takes them."""
    app = fm.App(pg_url)
    try:
        app.job(name="load", max_attempts=1, **job_options)(noop)
        app.submit("load", *(fm.RunRequest(f"done-{i}") for i in range(finished)))
        claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 60}
        while claimed := app.store.claim(limit=1000, **claim):  # type: ignore[arg-type]
            app.store.finish([success_of(run) for run in claimed], worker_id="w")
        app.submit("load", *(fm.RunRequest(f"run-{i}") for i in range(RUNNING)))
        with app.store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))  # no run is running
        claimed = app.store.claim(limit=RUNNING, **claim)  # type: ignore[arg-type]
        assert len(claimed) == RUNNING
        yield app, claimed[:BATCH]
    finally:
        app.close()


@pytest.fixture
def running_unknown_to_statistics(pg_url: str) -> Iterator[tuple[fm.App, list[ClaimedRun]]]:
    yield from running_unknown_to_statistics_with(pg_url)


@pytest.fixture
def limited_running_unknown_to_statistics(
    pg_url: str,
) -> Iterator[tuple[fm.App, list[ClaimedRun]]]:
    """As ``running_unknown_to_statistics``, the job rate-limited: its claims take the
    limited path (ferryman.store.limits)."""
    yield from running_unknown_to_statistics_with(
        pg_url, finished=LIMITED_FINISHED, rate=fm.Rate(1_000_000_000)
    )


def statuses(app: fm.App) -> dict[int, fm.RunStatus]:
    return {run.id: run.status for run in app.get_runs(job="load")}


def test_a_batch_of_successes_reads_each_run_by_its_key_whatever_the_statistics(
    running_unknown_to_statistics: tuple[fm.App, list[ClaimedRun]],
) -> None:
    app, batch = running_unknown_to_statistics
    params = {
        "ids": [run.id for run in batch],
        "tokens": [run.lease_token for run in batch],
        "worker": "w",
    }
    types = {"ids": "bigint[]", "tokens": "bigint[]", "worker": "text"}
    plan = generic_plan(app, SUCCEED_COMMITTED, types, params)
    # Each run of the batch found by its key, then updated: not each running
    # run compared with each success (RUNNING * BATCH).
    assert rows_read(plan) <= 3 * BATCH

    # And the statement does what it did: the batch succeeded, and only it.
    assert write(app, SUCCEED_COMMITTED, params) == sorted(run.id for run in batch)
    ended = statuses(app)
    assert sum(status is fm.RunStatus.SUCCEEDED for status in ended.values()) == FINISHED + BATCH
    assert all(ended[run.id] is fm.RunStatus.SUCCEEDED for run in batch)


def test_a_batch_of_failures_reads_each_run_by_its_key_whatever_the_statistics(
    running_unknown_to_statistics: tuple[fm.App, list[ClaimedRun]],
) -> None:
    app, batch = running_unknown_to_statistics
    with app.store.engine.begin() as conn:
        now = app.store.runs.now(conn)
    outcomes = [
        Outcome(kind=OutcomeKind.DEAD, lease=run.lease, attempt=run.attempt, error="boom")
        for run in batch
    ]
    params = end_params(outcomes, now, "w")
    types = {
        "ids": "bigint[]",
        "tokens": "bigint[]",
        "statuses": "text[]",
        "kinds": "text[]",
        "errors": "text[]",
        "available": "float8[]",
        "finished": "float8[]",
        "details": "text[]",
        "now": "float8",
        "worker": "text",
    }
    assert rows_read(generic_plan(app, END, types, params)) <= 3 * BATCH

    assert write(app, END, params) == sorted(run.id for run in batch)
    ended = statuses(app)
    assert sum(status is fm.RunStatus.DEAD for status in ended.values()) == BATCH
    assert all(ended[run.id] is fm.RunStatus.DEAD for run in batch)


SQL_TYPES = {str: "text", float: "float8", int: "bigint"}


def compiled(
    app: fm.App, statement: sa.Executable, **params: Any
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``statement`` as the driver gets it on ``params``, with its parameters' SQL types and
    values (``generic_plan``'s arguments): an IN list's values each a parameter."""
    assert isinstance(statement, sa.sql.ClauseElement)
    expanded = statement.compile(dialect=app.store.engine.dialect).construct_expanded_state(params)
    values = dict(expanded.parameters)
    return expanded.statement, {name: SQL_TYPES[type(v)] for name, v in values.items()}, values


def test_a_limited_claim_reads_no_finished_run_whatever_the_statistics(
    limited_running_unknown_to_statistics: tuple[fm.App, list[ClaimedRun]],
) -> None:
    """A limited claim's first statement asks whether a lease of its jobs expired, and a
    claim told one did reads the expired runs: both from the index of leases, never the
    table (a plan for the status as a parameter read all of it, on every claim)."""
    app, batch = limited_running_unknown_to_statistics
    lock = compiled(app, app.store.leases.limits._lock, jobs=["load"])
    # No lease expired: not one of the LIMITED_FINISHED + RUNNING runs is read.
    assert rows_read(generic_plan(app, *lock)) == 0

    expiring = batch[0]
    with app.store.engine.begin() as conn:
        now = app.store.runs.now(conn)
        conn.execute(runs.update().where(runs.c.id == expiring.id).values(lease_expires_at=now))
    assert rows_read(generic_plan(app, *lock)) <= 1
    expired = app.store.backend._expired_query
    assert (
        rows_read(generic_plan(app, *compiled(app, expired, jobs=["load"], now=now + 1, limit=10)))
        <= 1
    )

    # And the claim does what it did: it finds the expired run, which had its one
    # attempt and so is dead now, and leaves the others running.
    assert app.store.claim(worker_id="w2", jobs=app.jobs, limit=10, lease_seconds=60) == []
    ended = statuses(app)
    assert ended[expiring.id] is fm.RunStatus.DEAD
    assert sum(status is fm.RunStatus.RUNNING for status in ended.values()) == RUNNING - 1


@pytest.fixture
def none_running_unknown_to_statistics(pg_url: str) -> Iterator[fm.App]:
    """A store whose LIMITED_FINISHED runs a worker ran to the end, none running, analysed."""
    app = fm.App(pg_url)
    try:
        app.job(name="load")(noop)
        app.submit("load", *(fm.RunRequest(f"done-{i}") for i in range(LIMITED_FINISHED)))
        assert app.work(until_idle=True, handle_signals=False).succeeded == LIMITED_FINISHED
        with app.store.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
        yield app
    finally:
        app.close()


def test_the_running_runs_the_dashboard_reads_come_from_their_index_whatever_the_plan(
    none_running_unknown_to_statistics: fm.App,
) -> None:
    """The timeline's running runs and the workers page's are read newest or oldest
    first, a page at most: each statement, planned generically, reads no finished run
    (with the status bound, it walked the table by id to find none running)."""
    app = none_running_unknown_to_statistics
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if "'running'" in statement or "status = %(status" in statement:
            sent.append((statement, dict(parameters or {})))

    engines = {app.store.backend.engine, app.store.backend.read_engine}
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        timeline = app.store.timeline(since=0.0, until=1.0)  # no run finished then
        workers = app.store.worker_views(alive_within=60.0)
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", capture)
    assert timeline.bars == [] and len(workers) == 1 and workers[0].holding == 0
    assert len(sent) == 2, sent  # the timeline's read of running runs, the workers page's
    for statement, params in sent:
        types = {name: SQL_TYPES[type(value)] for name, value in params.items()}
        assert rows_read(generic_plan(app, statement, types, params)) == 0, statement
