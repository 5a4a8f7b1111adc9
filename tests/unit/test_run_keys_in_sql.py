"""Run keys compared in SQL (the run search, the SQL table sensor's anti-join)
tell apart keys whose first characters, all that PostgreSQL's index holds, agree."""

from __future__ import annotations

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.processing_log import no_run
from ferryman.store.run_key_sql import RUN_KEY_PREFIX
from ferryman.store.run_search import RunFilter

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
