"""Run the demo pipeline end to end on a fresh SQLite store and show what happened.

``make demo`` runs this; by hand, from the repository root::

    .venv/bin/python -m examples.demo.run_demo

It submits four orders (one of them twice), works until nothing is due,
prints what ferryman recorded, then asks the ``ferryman`` command the same
questions. The store is ``examples/demo/.state/demo.db``, recreated on every
run; it is left in place so you can go on exploring it with the CLI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from examples.demo import pipeline
from examples.demo.pipeline import app, orders

REPO = Path(__file__).resolve().parents[2]
APP = "examples.demo.pipeline:app"

ORDERS: list[dict[str, Any]] = [
    {"id": "o-1001", "customer": "acme", "amount": 120.00, "currency": "USD"},
    {"id": "o-1002", "customer": "globex", "amount": 75.50, "currency": "USD"},
    {"id": "o-1003", "customer": "initech", "amount": 99.90, "currency": "EUR"},
    {"id": "o-1004", "customer": "umbrella", "currency": "USD"},  # no amount
]


def heading(title: str) -> None:
    print(f"\n== {title} {'=' * (72 - len(title))}", flush=True)


def ferryman(*args: str) -> None:
    """Run the ferryman command as a user would, from the repository root."""
    print(f"\n$ ferryman --app {APP} {' '.join(args)}", flush=True)
    # The CLI finds the demo store on its own; keep any FERRYMAN_* of the caller out.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env.setdefault("COLUMNS", "110")
    subprocess.run(
        [sys.executable, "-m", "ferryman", "--app", APP, *args], cwd=REPO, env=env, check=True
    )


def main() -> None:
    # A fresh store on every run, whatever FERRYMAN_STORE says: the demo never touches yours.
    shutil.rmtree(pipeline.STATE_DIR, ignore_errors=True)
    pipeline.STATE_DIR.mkdir()
    app.use_store(pipeline.DEFAULT_STORE)
    pipeline.create_tables()
    print(f"store: {pipeline.DEFAULT_STORE}")

    heading("submit: one run per order, keyed by order id")
    requests = [fm.RunRequest(run_key=order["id"], payload=order) for order in ORDERS]
    submitted = app.submit("load_order", *requests)
    print(f"submitted {len(requests)} orders: {submitted.created} runs created")
    again = app.submit("load_order", requests[0])  # deduplicated: the same run
    print(
        f"submitted o-1001 again: {again.created} created, {again.deduplicated} deduplicated "
        f"(it is still run {again.run_ids[0]})"
    )

    heading("work until nothing is due")
    report = app.work(until_idle=True, concurrency=2)  # returns when nothing is due
    print(
        f"{report.claimed} attempts: {report.succeeded} succeeded, {report.retried} retried, "
        f"{report.failed} failed, {report.dead} dead"
    )

    heading("runs by status")
    for summary in app.status():
        counts = ", ".join(
            f"{s.value} {summary.counts[s]}" for s in fm.RunStatus if s in summary.counts
        )
        print(f"{summary.job}: {counts}")

    heading("the orders table")
    with app.engine.connect() as conn:
        rows = conn.execute(sa.select(orders).order_by(orders.c.order_id)).all()
    print(f"{'order_id':<10} {'customer':<10} {'amount (USD)':>12}  loaded by run")
    for row in rows:
        amount = f"{row.amount_usd_cents / 100:.2f}"
        print(f"{row.order_id:<10} {row.customer:<10} {amount:>12}  {row.loaded_by_run}")

    heading("rejected orders (failed at once, never retried)")
    for run in app.get_runs(status=fm.RunStatus.FAILED):
        print(f"run {run.id} {run.run_key}: {run.last_error}")

    heading("processing log of o-1003 (rates service timed out once)")
    (retried,) = [run for run in app.get_runs() if run.run_key == "o-1003"]
    print(f"run {retried.id}: {retried.status.value} on attempt {retried.attempt}")
    events = app.get_run_events(retried.id)
    for event in events:
        elapsed_ms = (event.at - events[0].at).total_seconds() * 1000
        detail = f"  {event.detail}" if event.detail else ""
        print(f"  +{elapsed_ms:4.0f} ms  {event.kind.value:<16} attempt {event.attempt}{detail}")

    heading("the same from the command line (run from the repository root)")
    ferryman("status")
    ferryman("runs", "--status", "failed")
    ferryman("runs", "show", str(retried.id))

    print("\nThe store is still there: try `.venv/bin/ferryman --app", APP, "runs`.")
    app.close()


if __name__ == "__main__":
    main()
