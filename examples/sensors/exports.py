"""Hand-written sensors: a poll sensor over numbered export files, and a push sensor.

An upstream system writes ``export-000001.json``, ``export-000002.json``...
into an exports directory (``EXPORTS_DIR``, default ``exports`` in the
current directory), each by writing a temporary file and renaming it, so a
file that exists is complete and names only ever grow. That makes the file
name a cursor: ``new_exports`` requests a run for each name above it and
returns the last one as the new cursor.

The same system can also announce a file with a message; ``export_notices``
is the push sensor that turns such a message into a run. Both use the file
name as the run_key, so a file seen by both still yields one run.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///sensors.db``). From the
repository root::

    python -m examples.sensors.exports          # create the customers table
    ferryman --app examples.sensors.exports:app tick
    ferryman --app examples.sensors.exports:app ingest export_notices \\
        --id msg-1 --payload '{"file": "export-000003.json"}'
    ferryman --app examples.sensors.exports:app work --until-idle
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///sensors.db"))
EXPORTS = Path(os.environ.get("EXPORTS_DIR", "exports"))
BATCH = 100  # files per evaluation; the rest wait for the next one

metadata = sa.MetaData()
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("export", sa.Text, nullable=False),
)


@app.job(max_attempts=3)
def load_export(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    """Upsert the export's customers; commits together with the run's success."""
    records = json.loads(Path(payload["path"]).read_text())
    with ctx.transaction() as conn:
        for record in records:
            conn.execute(customers.delete().where(customers.c.id == record["id"]))
            conn.execute(
                customers.insert().values(id=record["id"], name=record["name"], export=ctx.run_key)
            )


def export_request(name: str) -> fm.RunRequest:
    """One run per export file, keyed by its name."""
    return fm.RunRequest(run_key=name, payload={"path": str((EXPORTS / name).resolve())})


@app.poll_sensor(job="load_export", interval=30.0, backoff=fm.Backoff(base=30.0, max=600.0))
def new_exports(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
    """Export files named above the cursor, oldest first, at most BATCH of them.

    Runs outside any transaction. Raising (the directory is unreadable, say)
    records a failed evaluation and keeps the cursor; ferryman tries again
    after the backoff.
    """
    names = sorted(path.name for path in EXPORTS.glob("export-*.json"))
    new = [name for name in names if cursor is None or name > cursor][:BATCH]
    if not new:
        return fm.SensorResult()  # no cursor: the stored one is kept
    ctx.logger.info("%d new exports, up to %s", len(new), new[-1])
    return fm.SensorResult(run_requests=[export_request(name) for name in new], cursor=new[-1])


@app.push_sensor(job="load_export")
def export_notices(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    """A message ``{"file": "export-000042.json"}`` announcing a new export.

    Evaluated once per message id: a redelivered message writes nothing. A
    message without ``file`` raises, which records a failed evaluation; the
    sender may deliver it again.
    """
    return [export_request(message.payload["file"])]


def create_tables() -> None:
    """The table the job writes to, in the store database (idempotent)."""
    metadata.create_all(app.engine)


if __name__ == "__main__":
    create_tables()
    EXPORTS.mkdir(parents=True, exist_ok=True)
    print(f"store {app.store_url}: customers table ready; exports in {EXPORTS.resolve()}")
