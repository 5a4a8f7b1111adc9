"""The demo pipeline: load orders into an ``orders`` table, one run per order.

Read this file first; ``run_demo.py`` only drives it. From the repository root
the CLI reaches the same app with ``ferryman --app examples.demo.pipeline:app``.

The store is a SQLite file under ``examples/demo/.state/`` unless
``FERRYMAN_STORE`` (or the CLI's ``--store``) names another. The ``orders``
table lives in the store database too, which is what lets an order's insert
commit in the same transaction as its run's success.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm

STATE_DIR = Path(__file__).resolve().parent / ".state"
DEFAULT_STORE = f"sqlite:///{STATE_DIR / 'demo.db'}"

if "FERRYMAN_STORE" not in os.environ:
    STATE_DIR.mkdir(exist_ok=True)  # SQLite creates the file, not its directory
app = fm.App(os.environ.get("FERRYMAN_STORE", DEFAULT_STORE))  # or "postgresql://user@host/db"

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("customer", sa.Text, nullable=False),
    sa.Column("amount_usd_cents", sa.Integer, nullable=False),
    sa.Column("loaded_by_run", sa.Integer, nullable=False),
)

RATES_TO_USD = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}


def create_tables() -> None:
    """Create the ``orders`` table in the store database if it is missing."""
    metadata.create_all(app.engine)


def usd_rate(currency: str, *, attempt: int) -> float:
    """The exchange rate to USD, from a rates service (simulated: no network).

    Real services time out now and then. This one times out on every run's
    first attempt at a foreign currency, so the demo shows a retry each time.
    """
    if currency != "USD" and attempt == 1:
        raise TimeoutError(f"rates service did not answer for {currency} within 5 s")
    return RATES_TO_USD[currency]


# Three attempts, retried at once: a real job would keep the default backoff
# (1 s, 2 s, 4 s ... up to 5 min) to give the rates service time to recover.
@app.job(max_attempts=3, backoff=fm.Backoff(base=0.0))
def load_order(ctx: fm.JobContext, order: dict[str, Any]) -> None:
    """Load one order, converted to US cents.

    Bad input is rejected: the run fails at once, keeps the reason and is
    never retried. Any other exception (the rates service timing out) is
    retried. The insert commits together with the run's success, fenced by
    this worker's lease: a crash leaves both or neither, so no order is loaded
    twice even if a run executes twice.
    """
    amount = order.get("amount")
    if amount is None:
        raise fm.Reject(f"order {order['id']} has no amount")  # failed now, never retried
    if not isinstance(amount, int | float) or amount <= 0:
        raise fm.Reject(f"order {order['id']}: amount {amount!r} is not a positive number")
    rate = usd_rate(order["currency"], attempt=ctx.attempt)  # raising here means: retry
    with ctx.transaction() as conn:  # commits together with the run's success
        conn.execute(
            orders.insert().values(
                order_id=order["id"],
                customer=order["customer"],
                amount_usd_cents=round(amount * rate * 100),
                loaded_by_run=ctx.run_id,
            )
        )
