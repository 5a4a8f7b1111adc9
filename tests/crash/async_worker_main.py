"""A worker process running ``async def`` jobs, for the async crash test.

``python -m tests.crash.async_worker_main STORE [options]`` builds the app
below on STORE and works on it; with ``--report`` it writes the
:class:`~ferryman.worker.worker.WorkReport` as JSON when ``work`` returns. A
worker killed with SIGKILL writes nothing.

The job ``async_storm`` awaits a few tens of milliseconds (where most kills
land, with dozens of runs in flight on the one event loop), checkpoints
every other run, then writes one row of ``tests.crash.worker_main.effects``
through ``async with ctx.transaction()``: that table has no unique key, so an
effect applied twice shows up as two rows.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import ferryman as fm
from ferryman.logs import configure
from tests.crash.worker_main import effect


def build_app(store: str, *, lease_seconds: float) -> fm.App:
    app = fm.App(store, lease_seconds=lease_seconds)

    # Every kill costs the runs it held an attempt. A deadlock inside the job's
    # own transaction (MariaDB picks victims among dozens of writers) is the
    # store's contention: the attempt is given back, due again at once.
    @app.job(max_attempts=1000, backoff=fm.Backoff(base=0))
    async def async_storm(ctx: fm.AsyncJobContext, payload: dict[str, Any]) -> None:
        started_at = time.time()
        resumed_from = ctx.last_checkpoint
        if payload["checkpoint"]:
            await ctx.checkpoint({"attempt": ctx.attempt, "pid": os.getpid()})
        low, high = payload["work_ms"]
        await asyncio.sleep(random.uniform(low, high) / 1000)  # the job's work
        # The run's effect, committed with its success or not at all.
        async with ctx.transaction() as conn:
            await conn.execute(effect(ctx, started_at, resumed_from))

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.async_worker_main")
    parser.add_argument("store")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--until-idle", action="store_true")
    parser.add_argument("--report", type=Path, help="write the WorkReport here as JSON")
    args = parser.parse_args(argv)

    configure("WARNING")
    app = build_app(args.store, lease_seconds=args.lease_seconds)
    try:
        report = app.work(
            until_idle=args.until_idle, concurrency=args.concurrency, poll_interval=0.1
        )
    finally:
        app.close()
    if args.report is not None:
        partial = args.report.with_suffix(".partial")
        partial.write_text(json.dumps(dataclasses.asdict(report)))
        partial.replace(args.report)


if __name__ == "__main__":
    main()
