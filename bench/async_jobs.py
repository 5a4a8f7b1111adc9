"""Async jobs: runs that mostly wait, ferryman next to PgQueuer, in one run.

Every system processes ``--runs`` runs (default 1,000) whose job does
nothing but ``await asyncio.sleep(--sleep)`` (default 0.1 s), at most
``--concurrency`` at once (default 200), in one process:

* **ferryman async**: ``async def`` jobs on the worker's event loop, on SQLite
  and on PostgreSQL; timed from ``work()`` to its return, when every outcome
  is durable;
* **ferryman threads**: the same job written ``def`` with ``time.sleep``, on
  ``--concurrency`` job threads, for comparison (``--no-threads`` skips it);
* **PgQueuer** (asyncio, on PostgreSQL; skipped if not installed: ``make
  bench`` installs it): one entrypoint with ``concurrency_limit``, timed from
  ``run()`` until its queue table is empty.

The ideal is ``runs / concurrency * sleep`` (0.5 s by default). The peak
number of jobs seen running at once is reported too.

    .venv/bin/python bench/async_jobs.py [--runs 1000] [--concurrency 200]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import asyncio
import functools
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa

import ferryman as fm

PG_ADMIN = os.environ.get("FERRYMAN_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


class Overlap:
    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def enter(self) -> None:
        self.live += 1
        self.peak = max(self.peak, self.live)

    def leave(self) -> None:
        self.live -= 1


def ferryman_row(url: str, *, args: argparse.Namespace, threads: bool) -> tuple[float, int]:
    app = fm.App(url, create=True)
    overlap = Overlap()

    if threads:

        @app.job(name="nap")
        def nap_sync(ctx: fm.JobContext, payload: object) -> None:
            overlap.enter()  # (+= on ints under the GIL: close enough for a peak)
            time.sleep(args.sleep)
            overlap.leave()
    else:

        @app.job(name="nap")
        async def nap_async(ctx: fm.AsyncJobContext, payload: object) -> None:
            overlap.enter()
            await asyncio.sleep(args.sleep)
            overlap.leave()

    try:
        app.submit("nap", *(fm.RunRequest(f"nap-{i}") for i in range(args.runs)))
        start = time.perf_counter()
        report = app.work(until_idle=True, concurrency=args.concurrency, handle_signals=False)
        elapsed = time.perf_counter() - start
        if report.succeeded != args.runs:
            raise RuntimeError(f"{report.succeeded} of {args.runs} runs succeeded")
        return elapsed, overlap.peak
    finally:
        app.close()


async def pgqueuer_row(url: str, args: argparse.Namespace) -> tuple[float, int]:
    import asyncpg
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    url = url.replace("postgresql+psycopg://", "postgresql://", 1)  # libpq's own scheme
    connection = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(connection))
    await queries.install()
    payloads = [json.dumps({"i": i}).encode() for i in range(args.runs)]
    await queries.enqueue(["nap"] * args.runs, payloads, [0] * args.runs)
    qm = QueueManager(queries)
    overlap = Overlap()

    @qm.entrypoint("nap", concurrency_limit=args.concurrency)
    async def nap(job: Any) -> None:
        overlap.enter()
        await asyncio.sleep(args.sleep)
        overlap.leave()

    async def until_empty() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                row = await (await conn.execute("SELECT count(*) FROM pgqueuer")).fetchone()
                if row is not None and row[0] == 0:
                    qm.shutdown.set()
                    return time.perf_counter()
                await asyncio.sleep(0.01)

    start = time.perf_counter()
    poller = asyncio.create_task(until_empty())
    await qm.run(
        batch_size=args.concurrency,
        mode=QueueExecutionMode.drain,
        dequeue_timeout=timedelta(seconds=0.1),
    )
    end = await asyncio.wait_for(poller, timeout=120)
    await connection.close()
    return end - start, overlap.peak


def with_database(run: Callable[[str], tuple[float, int]]) -> tuple[float, int]:
    name = f"fm_bench_async_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = sa.make_url(PG_ADMIN).set(database=name, drivername="postgresql+psycopg")
        return run(url.render_as_string(hide_password=False))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def peer_rows(args: argparse.Namespace) -> list[tuple[str, str, float, int]]:
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        print("PgQueuer is not installed (make bench installs it): its row is skipped")
        return []
    return [("PgQueuer", "postgres", *with_database(lambda u: asyncio.run(pgqueuer_row(u, args))))]


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/async_jobs.py")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.1)
    parser.add_argument("--no-threads", dest="threads", action="store_false")
    parser.add_argument("--no-peers", dest="peers", action="store_false")
    args = parser.parse_args()

    rows: list[tuple[str, str, float, int]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for threads in (False, True) if args.threads else (False,):
            kind = "ferryman threads" if threads else "ferryman async"
            url = f"sqlite:///{scratch}/{'threads' if threads else 'async'}.db"
            rows.append((kind, "sqlite", *ferryman_row(url, args=args, threads=threads)))
            rows.append(
                (
                    kind,
                    "postgres",
                    *with_database(functools.partial(ferryman_row, args=args, threads=threads)),
                )
            )
    if args.peers:
        rows += peer_rows(args)

    ideal = args.runs / args.concurrency * args.sleep
    print(
        f"{args.runs} runs of sleep({args.sleep}) at concurrency {args.concurrency} "
        f"(ideal {ideal:.2f} s)"
    )
    print(f"{'system':<18} {'store':<9} {'seconds':>8} {'runs/s':>8} {'peak at once':>13}")
    for system, store, seconds, peak in rows:
        print(f"{system:<18} {store:<9} {seconds:8.2f} {args.runs / seconds:8.0f} {peak:13d}")


if __name__ == "__main__":
    main()
