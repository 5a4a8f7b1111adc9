"""Run keys compared in SQL (the run search, the SQL table sensor's anti-join)
tell apart keys whose first characters, all that PostgreSQL's index holds, agree."""

from __future__ import annotations

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.processing_log import no_run
from ferryman.store.run_key_sql import RUN_KEY_PREFIX, SameRunKey
from ferryman.store.run_search import RunFilter
from ferryman.store.schema import runs

SHARED = "k" * (RUN_KEY_PREFIX + 45)  # longer than the indexed part


def test_keys_longer_than_the_indexed_prefix_are_told_apart(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    submitted = app.submit("load", fm.RunRequest(SHARED + "a"), fm.RunRequest(SHARED + "b"))
    first, second = submitted.run_ids
    found = app.store.search_runs(RunFilter(run_key=SHARED + "b"))
    assert [run.id for run in found.items] == [second]
    both = app.store.search_runs(RunFilter(run_key_prefix=SHARED))
    assert sorted(run.id for run in both.items) == sorted([first, second])
    assert app.store.search_runs(RunFilter(run_key=SHARED)).items == []

    with app.engine.connect() as conn:
        absent = [
            key
            for key in (SHARED + "a", SHARED + "c", SHARED)
            if conn.execute(sa.select(sa.literal(1)).where(no_run("load", sa.literal(key)))).first()
        ]
    assert absent == [SHARED + "c", SHARED]


def test_a_run_key_is_found_through_the_index_on_every_store(make_app: type[fm.App]) -> None:
    """Compared as a plain condition: where booleans are not native (SQLite, MariaDB), a
    boolean function in a WHERE clause is compared with 1 (``run_key = ? = 1``), which no
    index serves, and every run was read to find one."""
    app = make_app()
    condition = SameRunKey(runs.c.run_key, sa.literal("key-7"))
    query = sa.select(runs.c.id).where(runs.c.job == "load", condition)
    with app.engine.connect() as conn:
        sql = str(query.compile(conn))
        assert "= 1" not in sql and "= true" not in sql.lower()
        if conn.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1])
                for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("load", "key-7"))
            )
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
