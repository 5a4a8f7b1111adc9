"""Two SQL table sensors over an ``orders`` table in the store database.

* ``new_orders`` (cursor mode) requests one run per new row, routed by the
  row's ``kind`` column: refunds to ``book_refund``, everything else to
  ``book_order``. Its cursor is the settled key plus the keys requested in
  the last ``commit_lag`` seconds, so a row whose id commits late is still
  found.
* ``unshipped_orders`` (missing mode) requests a ``ship_order`` run for each
  order row that has none yet: the ``NOT EXISTS`` processing-log pattern, with
  ferryman's runs as the log. It keeps no cursor: the runs are the state.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///sensors.db``). From the
repository root::

    python -m examples.sensors.sql_pipeline     # create the tables, insert three orders
    ferryman --app examples.sensors.sql_pipeline:app tick
    ferryman --app examples.sensors.sql_pipeline:app work --until-idle
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///sensors.db"))

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),  # "order" or "refund"
    sa.Column("customer", sa.Text, nullable=False),
    sa.Column("cents", sa.Integer, nullable=False),
)
ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("customer", sa.Text, nullable=False),
    sa.Column("cents", sa.Integer, nullable=False),  # refunds are negative
)
shipments = sa.Table(
    "shipments",
    metadata,
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("shipped_by_run", sa.Integer, nullable=False),
)


def book(ctx: fm.JobContext, row: dict[str, Any], sign: int) -> None:
    with ctx.transaction() as conn:  # commits with the run's success: booked once
        conn.execute(
            ledger.insert().values(
                order_id=row["id"], customer=row["customer"], cents=sign * row["cents"]
            )
        )


@app.job
def book_order(ctx: fm.JobContext, row: dict[str, Any]) -> None:
    """``row`` is the sensor's payload: the row's columns as JSON values."""
    book(ctx, row, +1)


@app.job
def book_refund(ctx: fm.JobContext, row: dict[str, Any]) -> None:
    book(ctx, row, -1)


@app.job
def ship_order(ctx: fm.JobContext, row: dict[str, Any]) -> None:
    with ctx.transaction() as conn:
        conn.execute(shipments.insert().values(order_id=row["id"], shipped_by_run=ctx.run_id))


app.poll_sensor(jobs=["book_order", "book_refund"], interval=15.0, name="new_orders")(
    fm.sensors.sql_table(
        app,  # the table is in the store database
        "orders",
        "id",
        routes={"^refund$": "book_refund", ".": "book_order"},  # first match wins
        route_column="kind",
        batch_size=500,
        # commit_lag: default 60 s on PostgreSQL (0 on SQLite, which commits one writer
        # at a time); raise it above your longest transaction that inserts orders.
    )
)

app.poll_sensor(job="ship_order", interval=60.0, name="unshipped_orders")(
    fm.sensors.sql_table(app, "orders", "id", mode="missing", where={"kind": "order"})
)


def create_tables() -> None:
    metadata.create_all(app.engine)


def add_orders(*rows: dict[str, Any]) -> None:
    with app.engine.begin() as conn:
        conn.execute(orders.insert(), list(rows))


if __name__ == "__main__":
    create_tables()
    add_orders(
        {"kind": "order", "customer": "acme", "cents": 12_000},
        {"kind": "order", "customer": "globex", "cents": 7_550},
        {"kind": "refund", "customer": "acme", "cents": 2_000},
    )
    print(f"store {app.store_url}: three orders added")
