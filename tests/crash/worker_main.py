"""A worker process for the crash and contention tests.

``python -m tests.crash.worker_main STORE [options]`` builds the app of these
tests on STORE, runs ``app.work(...)`` and, when it returns, writes the
:class:`~ferryman.worker.worker.WorkReport` as JSON to ``--report``. A worker
killed with SIGKILL writes nothing, which is how the tests tell the two apart.

Jobs (their effects go to tables the tests create with :data:`metadata`):

* ``storm``: optionally checkpoints, works for a few milliseconds (where most
  kills land), then writes one ``effects`` row through ``ctx.transaction()``.
* ``zombie``: in a worker started with ``--gate DIR``, announces
  ``DIR/<run_key>.started`` and waits for ``DIR/<run_key>.go`` before writing
  its effect; elsewhere it writes its effect at once.
* ``contention``: writes its effect through ``ctx.transaction()`` at once.
* ``keyed``: like ``storm`` (no checkpoint), limited to :data:`KEYED_CONCURRENCY`
  runs at once and one run per concurrency key (the queue-controls storm).
* ``rated``: writes nothing; claimed at most ``--rate`` times a second.
* ``chain``: works a few milliseconds, asks for one ``leaf`` run
  (``ctx.submit``), then succeeds through ``ctx.transaction()`` with its
  effect, or (``"transaction": false``) by returning; ``leaf`` writes its
  effect through ``ctx.transaction()``.

The effects table has no unique constraint on ``run_key`` on purpose: an
effect applied twice shows up as two rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from ferryman.logs import configure

GATE_TIMEOUT = 60.0
KEYED_CONCURRENCY = 6

metadata = sa.MetaData()

effects = sa.Table(
    "test_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_key", sa.Text, nullable=False),  # deliberately not unique
    sa.Column("worker_pid", sa.Integer, nullable=False),
    sa.Column("worker_id", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("lease_token", sa.BigInteger, nullable=False),
    sa.Column("resumed_from", sa.Text),  # the checkpoint this attempt started from, as JSON
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=False),
)


def effect(
    ctx: fm.JobContext | fm.AsyncJobContext, started_at: float, resumed_from: Any = None
) -> sa.Insert:
    """The insert of the run's effect row: who wrote it, under which lease, from where."""
    return effects.insert().values(
        run_key=ctx.run_key,
        worker_pid=os.getpid(),
        worker_id=ctx.worker_id,
        attempt=ctx.attempt,
        lease_token=ctx.lease.token,
        resumed_from=None if resumed_from is None else json.dumps(resumed_from),
        started_at=started_at,
        finished_at=time.time(),
    )


def write_effect(ctx: fm.JobContext, started_at: float, resumed_from: Any = None) -> None:
    """The run's effect, committed with its success or not at all."""
    with ctx.transaction() as conn:
        conn.execute(effect(ctx, started_at, resumed_from))


def build_app(
    store: str, *, lease_seconds: float, gate: Path | None = None, rate: float = 20.0
) -> fm.App:
    app = fm.App(store, lease_seconds=lease_seconds)

    # Every kill during the storm costs the runs it held an attempt.
    @app.job(max_attempts=1000)
    def storm(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        started_at = time.time()
        resumed_from = ctx.last_checkpoint
        if payload["checkpoint"]:
            ctx.checkpoint({"attempt": ctx.attempt, "pid": os.getpid()})
        low, high = payload["work_ms"]
        time.sleep(random.uniform(low, high) / 1000)  # the job's work
        write_effect(ctx, started_at, resumed_from)

    @app.job
    def zombie(ctx: fm.JobContext, payload: object) -> None:
        started_at = time.time()
        if gate is not None:
            (gate / f"{ctx.run_key}.started").write_text(str(os.getpid()))
            go = gate / f"{ctx.run_key}.go"
            deadline = time.monotonic() + GATE_TIMEOUT
            while not go.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the test never opened the gate")
                time.sleep(0.01)
        write_effect(ctx, started_at)

    @app.job
    def contention(ctx: fm.JobContext, payload: object) -> None:
        write_effect(ctx, time.time())

    @app.job(max_attempts=1000, concurrency=KEYED_CONCURRENCY, key_concurrency=1)
    def keyed(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        started_at = time.time()
        low, high = payload["work_ms"]
        time.sleep(random.uniform(low, high) / 1000)  # the job's work
        write_effect(ctx, started_at)

    @app.job(rate=fm.Rate(rate, per=1.0))
    def rated(ctx: fm.JobContext, payload: object) -> None: ...

    @app.job(max_attempts=1000)
    def chain(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        started_at = time.time()
        low, high = payload["work_ms"]
        time.sleep(random.uniform(low, high) / 1000)
        ctx.submit("leaf", fm.RunRequest(f"{ctx.run_key}/leaf", {"parent": ctx.run_key}))
        if payload["transaction"]:
            write_effect(ctx, started_at)

    @app.job(max_attempts=1000)
    def leaf(ctx: fm.JobContext, payload: object) -> None:
        time.sleep(random.uniform(0.005, 0.02))
        write_effect(ctx, time.time())

    return app


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.worker_main")
    parser.add_argument("store")
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=0)
    parser.add_argument("--claim-batch", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--until-idle", action="store_true")
    parser.add_argument("--report", type=Path, help="write the WorkReport here as JSON")
    parser.add_argument("--gate", type=Path, help="zombie runs wait for the test here")
    parser.add_argument("--ready", type=Path, help="touch this file once the store is open")
    parser.add_argument("--start-after", type=Path, help="start working once this file exists")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--rate", type=float, default=20.0, help="the rated job's claims/s")
    args = parser.parse_args(argv)

    configure(args.log_level)
    app = build_app(args.store, lease_seconds=args.lease_seconds, gate=args.gate, rate=args.rate)
    app.store  # noqa: B018 - open the store before announcing readiness
    if args.ready is not None:
        args.ready.touch()
    if args.start_after is not None:
        wait_for(args.start_after, GATE_TIMEOUT)
    try:
        report = app.work(
            until_idle=args.until_idle,
            concurrency=args.concurrency,
            prefetch=args.prefetch,
            claim_batch=args.claim_batch,
            poll_interval=args.poll_interval,
        )
    finally:
        app.close()
    if args.report is not None:
        document = {"pid": os.getpid(), **dataclasses.asdict(report)}
        partial = args.report.with_suffix(".partial")
        partial.write_text(json.dumps(document))
        partial.replace(args.report)


if __name__ == "__main__":
    main()
