"""The quickstart's app: load electricity-meter readings from JSON files into a table.

``docs/quickstart.md`` walks through it. Submit files with
``python readings.py FILE...``, then work with ``ferryman --app readings:app work``
(from the repository root: ``--app examples.quickstart.readings:app``).
The store is ``quickstart.db`` in the current directory unless ``FERRYMAN_STORE``
names another.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///quickstart.db"))

metadata = sa.MetaData()
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("meter", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, primary_key=True),
    sa.Column("kwh", sa.Float, nullable=False),
)


# Retried at once so the tutorial fits in one command; keep the default
# backoff (1 s, 2 s, 4 s ... up to 5 min) in real jobs.
@app.job(max_attempts=3, backoff=fm.Backoff(base=0.0))
def load_readings(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    """Insert one file's readings; they commit together with the run's success."""
    path = Path(payload["path"])
    text = path.read_text()  # a file not there yet raises: retried, then dead
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fm.Reject(f"{path.name} is not JSON: {exc}") from exc  # failed, never retried
    with ctx.transaction() as conn:
        conn.execute(readings.insert(), rows)


def submit(paths: list[str]) -> fm.SubmitResult:
    """One run per file, keyed by its name: submitting a file twice makes one run."""
    metadata.create_all(app.engine)  # the table the job writes to, in the store database
    requests = [
        fm.RunRequest(run_key=Path(path).name, payload={"path": str(Path(path).resolve())})
        for path in paths
    ]
    return app.submit("load_readings", *requests)


if __name__ == "__main__":
    result = submit(sys.argv[1:])
    print(f"runs {list(result.run_ids)}: {result.created} new, {result.deduplicated} already known")
