"""A folder sensor routing meter-reading files to two jobs, on a SQLite store.

Files land in an inbox (``FOLDER_PIPELINE_INBOX``, default ``inbox`` in the
current directory). The ``incoming`` sensor requests one run per new or
changed file: ``*.csv`` files go to ``load_csv``, ``*.json`` files to
``load_json``, anything else is counted as skipped on the evaluation. Both
jobs write the readings through ``ctx.transaction()``, so a file's rows
commit together with its run's success.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///sensors.db`` in the
current directory); the ``readings`` table lives in it. From the repository
root::

    python -m examples.sensors.folder_pipeline          # create the readings table
    ferryman --app examples.sensors.folder_pipeline:app tick
    ferryman --app examples.sensors.folder_pipeline:app work --until-idle

or run sensors and workers together with ``ferryman ... run``. See
docs/how-to/sensors.md.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///sensors.db"))
INBOX = Path(os.environ.get("FOLDER_PIPELINE_INBOX", "inbox"))

metadata = sa.MetaData()
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("meter", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("kwh", sa.Float, nullable=False),
    sa.Column("loaded_from", sa.Text, nullable=False),  # the run_key: relpath@mtime_ns:size
)


def store_readings(ctx: fm.JobContext, rows: list[dict[str, Any]]) -> None:
    """Replace the readings the file provides; commits with the run's success."""
    try:
        values = [
            {
                "meter": str(row["meter"]),
                "day": str(row["day"]),
                "kwh": float(row["kwh"]),
                "loaded_from": ctx.run_key,
            }
            for row in rows
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise fm.Reject(f"bad reading in {ctx.run_key}: {exc!r}") from exc  # never retried
    keys = [(value["meter"], value["day"]) for value in values]
    with ctx.transaction() as conn:
        if keys:  # a rewritten file is a new version: its readings replace the old ones
            conn.execute(
                readings.delete().where(sa.tuple_(readings.c.meter, readings.c.day).in_(keys))
            )
            conn.execute(readings.insert(), values)


@app.job(max_attempts=3)
def load_csv(ctx: fm.JobContext, file: dict[str, Any]) -> None:
    """``file`` is the folder sensor's payload: path, relpath, size, mtime_ns."""
    with open(file["path"], newline="") as handle:
        rows: list[dict[str, Any]] = list(csv.DictReader(handle))
    store_readings(ctx, rows)


@app.job(max_attempts=3)
def load_json(ctx: fm.JobContext, file: dict[str, Any]) -> None:
    try:
        rows = json.loads(Path(file["path"]).read_text())
    except json.JSONDecodeError as exc:
        raise fm.Reject(f"{file['relpath']} is not JSON: {exc}") from exc
    store_readings(ctx, rows if isinstance(rows, list) else [rows])


# One run per file version; the runs and the cursor commit in one transaction.
incoming = app.poll_sensor(jobs=["load_csv", "load_json"], interval=10.0, name="incoming")(
    fm.sensors.folder(
        INBOX,
        "*",
        routes={r"\.csv$": "load_csv", r"\.json$": "load_json"},
        stable_for=2.0,  # a file changed in the last 2 s is still being written: wait
    )
)


def create_tables() -> None:
    """The table the jobs write to, in the store database (idempotent)."""
    metadata.create_all(app.engine)


if __name__ == "__main__":
    create_tables()
    INBOX.mkdir(parents=True, exist_ok=True)
    print(f"store {app.store_url}: readings table ready; inbox {INBOX.resolve()}")
