"""Two schedules: exchange rates every quarter of an hour, a daily report in Paris time.

``rates`` asks for a run of ``refresh_rates`` at every quarter of an hour
(UTC) and, with ``catch_up="all"``, for each quarter missed while no daemon
ran. ``daily_report`` runs ``build_report`` at 06:00 on the wall clock of
Paris — 05:00 UTC in winter, 04:00 UTC in summer — and, after downtime, only
for the latest morning missed (``catch_up="latest"``, the default). Each run's
payload says which tick it stands for; both jobs record it in the
``refreshes`` table through ``ctx.transaction()``, so the row commits with the
run's success.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///schedules.db`` in the
current directory). From the repository root::

    python -m examples.schedules.reports          # create the refreshes table
    ferryman --app examples.schedules.reports:app run

See docs/how-to/schedules.md.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///schedules.db"))

metadata = sa.MetaData()
refreshes = sa.Table(
    "refreshes",
    metadata,
    sa.Column("run_key", sa.Text, primary_key=True),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("covers", sa.Text, nullable=False),  # the tick, or the day reported on
)


@app.job
def refresh_rates(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    with ctx.transaction() as conn:
        conn.execute(
            refreshes.insert().values(run_key=ctx.run_key, job=ctx.job, covers=payload["tick"])
        )


@app.job
def build_report(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    with ctx.transaction() as conn:
        conn.execute(
            refreshes.insert().values(run_key=ctx.run_key, job=ctx.job, covers=payload["day"])
        )


def report_day(tick: datetime) -> dict[str, str]:
    """The payload of a daily report: the day before the tick, in Paris."""
    return {"day": (tick.date() - timedelta(days=1)).isoformat()}


app.schedule("rates", job="refresh_rates", cron="*/15 * * * *", catch_up="all")
app.schedule(
    "daily_report",
    job="build_report",
    cron="0 6 * * *",
    timezone="Europe/Paris",
    payload=report_day,
)


if __name__ == "__main__":
    metadata.create_all(app.engine)
