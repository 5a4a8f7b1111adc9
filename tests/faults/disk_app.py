"""The app of the full-disk test, run as a real ``ferryman work`` process.

``write_padded`` works for a few milliseconds, then writes one effect row
with ``padding`` characters of filler through ``ctx.transaction()``, so a
small disk fills after a few hundred runs. Whatever the block raises is
appended as a JSON line to the file named by the payload's ``errors`` (kept
off the full disk), then raised again: the test reads exactly what a job
saw. ``max_attempts=1``: an attempt the fault used up shows as a dead run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm

metadata = sa.MetaData()

effects = sa.Table(
    "test_padded_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_key", sa.Text, nullable=False),  # deliberately not unique
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("padding", sa.Text, nullable=False),
)

app = fm.App(lease_seconds=30)


@app.job(max_attempts=1)
def write_padded(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    time.sleep(payload["work_ms"] / 1000)  # the job's work
    try:
        with ctx.transaction() as conn:
            conn.execute(
                effects.insert().values(
                    run_key=ctx.run_key,
                    attempt=ctx.attempt,
                    worker_id=ctx.worker_id,
                    padding="x" * payload["padding"],
                )
            )
    except Exception as exc:
        seen = {
            "run_key": ctx.run_key,
            "type": type(exc).__name__,
            "store_error": isinstance(exc, fm.StoreError),
            "message": str(exc),
        }
        with Path(payload["errors"]).open("a") as out:
            out.write(json.dumps(seen) + "\n")
        raise
