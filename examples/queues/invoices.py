"""Invoices: priorities, a delayed run, one run per customer at a time, a rate-limited API.

``send_invoice`` runs at most four at once across every worker, and never two
for one customer (``concurrency_key``): a customer's invoices are numbered in
the order they are sent. Reminders wait a day (``not_before``); a correction
jumps the queue (``priority``). ``notify_partner`` calls an API allowed ten
calls a second (``rate``), however many workers run it.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///invoices.db`` in the
current directory). From the repository root::

    python -m examples.queues.invoices            # create the table, submit the runs
    ferryman --app examples.queues.invoices:app work --until-idle
    ferryman --app examples.queues.invoices:app runs

See docs/how-to/queues.md.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///invoices.db"))

metadata = sa.MetaData()
sent = sa.Table(
    "sent_invoices",
    metadata,
    sa.Column("run_key", sa.Text, primary_key=True),
    sa.Column("customer", sa.Text, nullable=False),
)


@app.job(concurrency=4, key_concurrency=1)
def send_invoice(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    with ctx.transaction() as conn:
        conn.execute(sent.insert().values(run_key=ctx.run_key, customer=payload["customer"]))


@app.job(rate=fm.Rate(10, per=1.0), priority=-1)
def notify_partner(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    """Call the partner's API here; ``ctx.run_key`` is the idempotency key."""


def requests() -> list[fm.RunRequest]:
    invoices = [
        fm.RunRequest(f"invoice-{n}", {"customer": customer}, concurrency_key=customer)
        for n, customer in enumerate(["acme", "acme", "globex", "initech", "acme"])
    ]
    correction = fm.RunRequest(
        "correction-7", {"customer": "globex"}, priority=10, concurrency_key="globex"
    )
    reminder = fm.RunRequest(
        "reminder-3",
        {"customer": "initech"},
        concurrency_key="initech",
        not_before=timedelta(days=1),  # a day from now, by the store's clock
    )
    return [*invoices, correction, reminder]


def main() -> None:
    metadata.create_all(app.engine)
    app.submit("send_invoice", *requests())
    app.submit("notify_partner", fm.RunRequest("partner-acme"))


if __name__ == "__main__":
    main()
