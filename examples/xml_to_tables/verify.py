"""The queries that prove the pipeline loaded every application exactly once.

    python -m examples.xml_to_tables.verify [--store URL]

Each check counts rows that must not exist; all of them are 0 once the
workers are idle. Exit status 1 if any is not.
"""

from __future__ import annotations

import argparse
import os

import sqlalchemy as sa

from examples.xml_to_tables.schema import app_base, app_xml, contact_base
from ferryman.store.schema import run_events, runs

JOB = "load_application"
RUN_KEY_PREFIX = "app_xml:"


def _run_key(app_id: sa.ColumnElement[int]) -> sa.ColumnElement[str]:
    return sa.literal(RUN_KEY_PREFIX) + sa.cast(app_id, sa.Text)


def _runs_with(status: str | tuple[str, ...]) -> sa.ColumnElement[bool]:
    statuses = (status,) if isinstance(status, str) else status
    return sa.and_(runs.c.job == JOB, runs.c.status.in_(statuses))


CHECKS: dict[str, sa.Select[tuple[int]]] = {
    # Every staged application was turned into a run (the sensor caught up).
    "staged apps without a run": sa.select(sa.func.count()).where(
        ~sa.exists().where(runs.c.job == JOB, runs.c.run_key == _run_key(app_xml.c.app_id))
    ),
    # Nothing is left half-way.
    "runs still queued or running": sa.select(sa.func.count()).where(
        _runs_with(("queued", "running"))
    ),
    # A succeeded run has its application's rows: its effects committed with it.
    "succeeded runs without app_base rows": sa.select(sa.func.count()).where(
        _runs_with("succeeded"),
        ~sa.exists().where(_run_key(app_base.c.app_id) == runs.c.run_key),
    ),
    # Rows exist only for succeeded runs: a rejected or dead run wrote nothing.
    "app_base rows without a succeeded run": sa.select(sa.func.count()).where(
        ~sa.exists().where(_runs_with("succeeded"), runs.c.run_key == _run_key(app_base.c.app_id))
    ),
    # Each application's contacts were written once, all of them.
    "apps whose contact rows differ from the document": sa.select(sa.func.count()).where(
        app_base.c.contact_count
        != sa.select(sa.func.count())
        .where(contact_base.c.app_id == app_base.c.app_id)
        .scalar_subquery()
    ),
    # The processing log shows one success per succeeded run, never two.
    "runs with more than one 'succeeded' event": sa.select(sa.func.count()).select_from(
        sa.select(run_events.c.run_id)
        .where(run_events.c.kind == "succeeded")
        .group_by(run_events.c.run_id)
        .having(sa.func.count() > 1)
        .subquery()
    ),
}


def verify(engine: sa.Engine) -> dict[str, int]:
    """Each check's count of offending rows (all 0 when the load is exactly-once)."""
    with engine.connect() as conn:
        return {name: int(conn.scalar(query) or 0) for name, query in CHECKS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", default=os.environ.get("FERRYMAN_STORE", "sqlite:///xml_to_tables.db")
    )
    args = parser.parse_args()
    from examples.xml_to_tables.pipeline import app

    app.use_store(args.store)
    results = verify(app.engine)
    for name, count in results.items():
        print(f"{'ok  ' if count == 0 else 'FAIL'} {count:>6}  {name}")
    raise SystemExit(1 if any(results.values()) else 0)


if __name__ == "__main__":
    main()
