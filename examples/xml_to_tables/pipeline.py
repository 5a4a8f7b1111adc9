"""XML credit applications → relational tables, exactly once, with several workers at once.

* ``staged_applications`` is a SQL-table sensor in *missing* mode over the
  staging table ``app_xml``: every application that has no run yet gets one,
  keyed ``app_xml:<app_id>``. The runs table is the processing log, so there
  is no ``processing_log`` of our own to keep in step, and the intent to
  process an application is durable before any worker touches it.
* ``load_application`` reads the document, parses, validates and maps it
  outside any transaction, then writes every table through
  ``ctx.transaction()``: the rows and the run's ``succeeded`` record commit
  together, fenced by the worker's lease. A worker killed at any point leaves
  either both or neither, and the run is taken over once its lease expires.
* A document that can never load (malformed, schema-invalid, semantically
  wrong) is rejected with a reason that names the app and the line: the run
  ends ``failed`` at once, the other applications go on, and
  ``ferryman retry`` loads it again once the staging row is fixed.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///xml_to_tables.db``); the
tables live in the store database so the rows can commit with the runs. See
docs/how-to/xml-to-tables.md, and ``python -m examples.xml_to_tables`` for a
walk-through on a fresh SQLite store.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from examples.xml_to_tables.mapping import InvalidApplication, Rows, map_application
from examples.xml_to_tables.schema import TARGET_TABLES, app_xml, metadata

app = fm.App(
    os.environ.get("FERRYMAN_STORE", "sqlite:///xml_to_tables.db"),
    # A worker that dies holds its runs this long; heartbeats renew the lease of live ones.
    lease_seconds=float(os.environ.get("XML_TO_TABLES_LEASE_SECONDS", "30")),
)


@app.job(max_attempts=5, backoff=fm.Backoff(base=2.0, factor=2.0, max=120.0))
def load_application(ctx: fm.JobContext, row: dict[str, Any]) -> None:
    """Map the document of ``row["app_id"]`` into the target tables, once."""
    app_id = int(row["app_id"])
    with ctx.read() as conn:
        document = conn.scalar(sa.select(app_xml.c.xml).where(app_xml.c.app_id == app_id))
    if document is None:
        raise fm.Reject(f"app {app_id}: no longer in app_xml")
    try:
        rows = map_application(app_id, document)  # CPU-bound; no transaction is open
    except InvalidApplication as exc:
        raise fm.Reject(str(exc)) from None
    with ctx.transaction() as conn:  # the rows commit with the run's success, or not at all
        write_rows(conn, rows)


# Built once: SQLAlchemy then reuses each statement's compiled form without
# building and keying a new INSERT per application.
INSERTS = [(table.name, table.insert()) for table in TARGET_TABLES]


def write_rows(conn: sa.Connection, rows: Rows) -> None:
    """Insert one application's rows, parents first (one executemany per table)."""
    for table_name, insert in INSERTS:
        if rows[table_name]:
            conn.execute(insert, rows[table_name])


# Only the key is copied into each run's payload; the job reads the document itself.
staged_applications = fm.sensors.sql_table(
    app, "app_xml", "app_id", mode="missing", columns=["app_id"]
)
app.poll_sensor(job="load_application", interval=5.0, name="staged_applications")(
    staged_applications
)


def create_tables(engine: sa.Engine | None = None) -> None:
    metadata.create_all(engine or app.engine)
