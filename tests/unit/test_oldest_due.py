"""The oldest due run of each job, read by seeks, equals a plain GROUP BY, on every store.

The claim index holds the priority before the due time, so the oldest due run
is looked up per priority (``read_queries.oldest_due_age``): checked here with
several priorities, a run not due yet, and a job with nothing queued.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from ferryman.model import RunStatus
from ferryman.store import read_queries
from ferryman.store.schema import runs


def test_the_oldest_due_run_of_each_job_over_every_priority(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.job()
    def other(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("load", fm.RunRequest("low-and-oldest", priority=-3))
    app.submit("load", fm.RunRequest("high", priority=7), fm.RunRequest("middle", priority=2))
    app.submit("load", fm.RunRequest("later", priority=9, not_before=timedelta(hours=1)))
    app.submit("other", fm.RunRequest("done"))
    app.work(until_idle=True, jobs=["other"])
    app.submit("other", fm.RunRequest("not-due", not_before=timedelta(hours=1)))

    with app.store.read("reading the oldest due runs") as conn:
        at = app.store.runs.now(conn)
        found = read_queries.oldest_due_age(conn, at)
        expected = {
            job: at - first
            for job, first in conn.execute(
                sa.select(runs.c.job, sa.func.min(runs.c.available_at))
                .where(runs.c.status == RunStatus.QUEUED.value, runs.c.available_at <= at)
                .group_by(runs.c.job)
            )
        }
    assert found == expected and set(found) == {"load"}
