"""What a job's ``ctx.transaction()`` block leaves behind never reaches another block.

On SQLite the store's writes in one process share one connection (group
commit), so anything a block leaves open on it, or ends itself, would reach
the writers that come after it. Every case runs on both stores.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm

metadata = sa.MetaData()
stock = sa.Table(
    "stock",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("reserved", sa.Integer, nullable=False),
)
effects = sa.Table(
    "effects",
    metadata,
    sa.Column("run_key", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
)


def create_tables(app: fm.App) -> None:
    metadata.create_all(app.engine)
    with app.engine.begin() as conn:
        conn.execute(stock.insert(), [{"id": i, "reserved": 0} for i in range(5)])


def effect_rows(app: fm.App) -> list[tuple[str, int]]:
    with app.engine.begin() as conn:
        rows = conn.execute(sa.select(effects.c.run_key, effects.c.attempt))
        return sorted((run_key, attempt) for run_key, attempt in rows)


def write_effect(ctx: fm.JobContext, payload: None) -> None:
    """The ordinary job: one effect row, written with the run's success."""
    with ctx.transaction() as conn:
        conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))


def statuses(app: fm.App) -> Counter[tuple[str, str]]:
    return Counter((run.job, run.status.value) for run in app.get_runs())


# -- results left open ---------------------------------------------------------


def test_a_result_left_open_in_one_block_does_not_fail_the_other_runs(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    create_tables(app)
    app.job(name="ordinary", max_attempts=1)(write_effect)
    kept: list[sa.CursorResult[Any]] = []  # the job keeps its result past the block

    @app.job(max_attempts=1)
    def reserve(ctx: fm.JobContext, payload: None) -> None:
        with ctx.transaction() as conn:
            # Valid SQLAlchemy: one row read of the five the statement returns.
            reserve = stock.update().values(reserved=stock.c.reserved + 1)
            if conn.dialect.name == "mariadb":  # no UPDATE ... RETURNING: a locking read
                result = conn.execute(sa.select(stock.c.id).with_for_update())
                conn.execute(reserve)
            else:
                result = conn.execute(reserve.returning(stock.c.id))
            result.fetchone()
            kept.append(result)

    app.submit("ordinary", *(fm.RunRequest(f"ordinary-{i}") for i in range(40)))
    app.submit("reserve", *(fm.RunRequest(f"reserve-{i}") for i in range(10)))
    report = app.work(until_idle=True, concurrency=4, handle_signals=False)

    assert statuses(app) == {("ordinary", "succeeded"): 40, ("reserve", "succeeded"): 10}
    assert (report.succeeded, report.dead, report.retried) == (50, 0, 0)
    assert effect_rows(app) == sorted((f"ordinary-{i}", 1) for i in range(40))
    with app.engine.begin() as conn:
        assert set(conn.execute(sa.select(stock.c.reserved)).scalars()) == {10}
    assert len(kept) == 10


# -- the block ends the transaction itself ---------------------------------------

Misuse = Callable[[sa.Connection], None]


def commit_the_transaction_object(conn: sa.Connection) -> None:
    transaction = conn.get_transaction()
    assert transaction is not None
    transaction.commit()


MISUSES: dict[str, Misuse] = {
    "conn.commit()": lambda conn: conn.commit(),
    "conn.rollback()": lambda conn: conn.rollback(),
    "transaction.commit()": commit_the_transaction_object,
    "COMMIT as SQL": lambda conn: conn.exec_driver_sql("COMMIT").close(),
}


def swallowed(misuse: Misuse) -> Misuse:
    """The misuse, its error caught by the job: the block must still be refused."""

    def call(conn: sa.Connection) -> None:
        with contextlib.suppress(fm.FerrymanError):
            misuse(conn)

    return call


@pytest.mark.parametrize(
    "misuse",
    [*MISUSES.values(), swallowed(MISUSES["conn.commit()"])],
    ids=[*MISUSES, "conn.commit() caught by the job"],
)
def test_a_block_that_ends_its_own_transaction_is_refused_and_applies_nothing(
    make_app: type[fm.App], misuse: Misuse
) -> None:
    app = make_app()
    create_tables(app)

    @app.job(max_attempts=1)
    def always(ctx: fm.JobContext, payload: None) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            misuse(conn)

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    def first_attempt_only(ctx: fm.JobContext, payload: None) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            if ctx.attempt == 1:
                misuse(conn)

    app.submit("always", fm.RunRequest("a"))
    app.submit("first_attempt_only", fm.RunRequest("b"))
    report = app.work(until_idle=True, concurrency=2, handle_signals=False)

    assert statuses(app) == {("always", "dead"): 1, ("first_attempt_only", "succeeded"): 1}
    assert (report.succeeded, report.retried, report.dead) == (1, 1, 1)
    # Only the clean attempt's effect: the refused block committed nothing.
    assert effect_rows(app) == [("b", 2)]
    [dead] = app.get_runs(job="always")
    assert dead.last_error is not None
    assert "inside ctx.transaction()" in dead.last_error
    assert "commits the block's writes with the run's success" in dead.last_error


def test_a_refused_block_does_not_fail_the_blocks_that_share_its_commit(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    create_tables(app)
    app.job(name="ordinary", max_attempts=1)(write_effect)

    @app.job(max_attempts=1)
    def commits(ctx: fm.JobContext, payload: None) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            conn.commit()

    app.submit("ordinary", *(fm.RunRequest(f"ordinary-{i}") for i in range(40)))
    app.submit("commits", *(fm.RunRequest(f"commits-{i}") for i in range(10)))
    report = app.work(until_idle=True, concurrency=4, handle_signals=False)

    assert statuses(app) == {("ordinary", "succeeded"): 40, ("commits", "dead"): 10}
    assert (report.succeeded, report.dead) == (40, 10)
    assert effect_rows(app) == sorted((f"ordinary-{i}", 1) for i in range(40))
