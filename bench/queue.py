"""Queue throughput: ferryman next to Procrastinate, PgQueuer and DBOS, in one run.

On SQLite and PostgreSQL by default; ``--store mariadb`` (or ``all``) adds
ferryman's row on MariaDB, next to that server's single-row commits.

For every system and store this measures, on no-op jobs:

* **enqueue 1-by-1**: one enqueue call (one transaction) per run, timed on a
  subset (``--one-by-one``, default 2,000) and reported as runs/s; for
  ferryman, timed in turns with as many bare single-row commits on the same
  database (server), so that the ratio of the two holds on a busy machine;
* **enqueue 1-by-1, 8 threads** (ferryman): the same, from ``--threads``
  threads (default 8) of one process submitting one by one at once, as a web
  server's request threads would; reported with its ratio to one thread
  submitting as many runs, timed in turns with the threads;
* **enqueue batched**: ``--runs`` runs (default 20,000) in calls of
  ``--batch-size`` runs (default 1,000);
* **processing**: from the moment the first job starts to the moment every
  completion of those ``--runs`` runs is durable in the database.

ferryman's first row runs the worker at its defaults (``app.work()`` with no
worker keyword, as ``ferryman work`` without flags); ``ferryman-tuned`` with
``--concurrency``, ``--prefetch`` and ``--claim-batch``.

Each system runs alone, in a subprocess of its own, one after the other (the
machine has two cores and the PostgreSQL server needs one of them). Each one
gets a freshly created PostgreSQL database, dropped again at the end; SQLite
runs use a file in a fresh temporary directory. Baselines — single-row
commits per second on the same PostgreSQL server and on SQLite in WAL mode
with ``synchronous=FULL`` — are measured in the same run, for context.

Run it with ``make bench`` (which creates ``.venv-bench`` with the peers), or
``.venv-bench/bin/python bench/queue.py --help``.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and this file
# (bench/queue.py) would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import asyncio
import contextlib
import ipaddress
import json
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ferryman: the worker at its defaults (app.work() with no keywords), the
# row users get; ferryman-tuned: with --concurrency, --prefetch and
# --claim-batch; ferryman-controls: at the defaults, on a job with a rate
# limit far above the throughput, each run with a priority (one of three) and
# a concurrency key of its own, so that every claim takes the limited path.
SYSTEMS = ("ferryman", "ferryman-tuned", "ferryman-controls", "pgqueuer", "procrastinate", "dbos")
POSTGRES_ONLY = {"pgqueuer", "procrastinate", "dbos"}
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MARIADB = "mariadb+pymysql://root@127.0.0.1:3306/test"
STORE_LABELS = {"postgres": "PostgreSQL", "sqlite": "SQLite", "mariadb": "MariaDB"}
# Per run of the bench: two runs at once on one server must not drop each other's databases.
DB_PREFIX = f"ferryman_bench_{os.getpid()}_"
POLL_SECONDS = 0.02  # how often the peers' tables are counted while they work
BASELINE_SECONDS = 3.0
BUSY_CPU = 0.2  # share of all CPUs other processes may use before the bench warns

# What each system promises about a completion when the job function returns.
DURABILITY = {
    "ferryman": "outcome committed (group commit) before a run counts as done",
    "ferryman-tuned": "as ferryman",
    "ferryman-controls": "as ferryman",
    "pgqueuer": (
        "acks BUFFERED in memory (flushed every batch_size jobs or 0.1 s): "
        "a crash loses them and finished jobs run again"
    ),
    "procrastinate": "one finish-job transaction per job before the next is fetched",
    "dbos": "one workflow-status write per workflow on completion",
}


@dataclass
class Result:
    system: str
    store: str
    one_by_one: float | None = None
    threads: float | None = None  # 1-by-1 from --threads threads at once
    one_thread: float | None = None  # 1-by-1 from one thread, timed in turns with the threads
    bare_commits: float | None = None  # single-row commits interleaved with the 1-by-1 submits
    batched: float | None = None
    processing: float | None = None
    # ferryman-controls: processing of its job and of a plain one, timed in turns
    plain_in_turns: float | None = None
    controls_in_turns: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------------------
# helpers shared by the parent and the children
# ---------------------------------------------------------------------------


def pg_url(admin: str, database: str, driver: str = "postgresql") -> str:
    """``admin`` with another database name (and scheme, for SQLAlchemy URLs)."""
    import psycopg.conninfo

    params = psycopg.conninfo.conninfo_to_dict(admin)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    password = params.get("password")
    auth = f"{user}:{password}" if password else f"{user}"
    return f"{driver}://{auth}@{host}:{port}/{database}"


def check_loopback(admin: str) -> None:
    import psycopg.conninfo

    host = str(psycopg.conninfo.conninfo_to_dict(admin).get("host", "127.0.0.1"))
    if host == "localhost" or host.startswith("/"):
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"--pg must name a server on this machine (loopback), not {host!r}")


def mariadb_connect(admin: str, database: str | None = None) -> Any:
    """An autocommit PyMySQL connection to ``database`` (or the admin URL's) on the server."""
    import pymysql
    import sqlalchemy as sa

    url = sa.make_url(admin)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=database or url.database,
        autocommit=True,
        ssl_disabled=True,  # loopback only; PyMySQL would offer TLS on every connection
    )


def mariadb_url(admin: str, database: str) -> str:
    """The store URL of ``database`` on the admin URL's server."""
    import sqlalchemy as sa

    url = sa.make_url(admin).set(drivername="mariadb+pymysql", database=database)
    url = url.update_query_dict({"ssl_disabled": "true"})
    return url.render_as_string(hide_password=False)


def mariadb_execute(admin: str, *statements: str) -> None:
    with mariadb_connect(admin) as conn, conn.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def check_mariadb_loopback(admin: str) -> None:
    import sqlalchemy as sa

    host = sa.make_url(admin).host or "127.0.0.1"
    if host == "localhost" or ipaddress.ip_address(host).is_loopback:
        return
    raise SystemExit(f"--mariadb must name a server on this machine (loopback), not {host!r}")


def admin_execute(admin: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def create_database(admin: str, name: str) -> None:
    admin_execute(
        admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'
    )


def drop_database(admin: str, name: str) -> None:
    admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def analyze(url: str) -> None:
    """Refresh the planner's statistics after the bulk enqueue, as autovacuum soon would.

    Right after 20,000 rows arrive the statistics still describe an empty
    table; a peer whose dequeue query then picks a bad plan would be measured
    on that accident rather than on its design (``--no-analyze`` to see it).
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs in use over ``seconds`` (Linux /proc/stat; else the load average)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    try:
        idle_before, total_before = sample()
        time.sleep(seconds)
        idle_after, total_after = sample()
    except OSError:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    return 1 - (idle_after - idle_before) / max(1, total_after - total_before)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


class FirstStart:
    """The moment the first job of a run started (perf_counter), set by the job itself."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.count = 0

    def hit(self) -> None:
        # A race between two threads here shifts the start by microseconds at most.
        if self.at is None:
            self.at = time.perf_counter()
        self.count += 1


class CpuClock:
    """CPU time spent from now on by this process and by the PostgreSQL server.

    The server's is read from /proc, all of its processes summed (backends,
    WAL writer, checkpointer, autovacuum): a figure for a server on this host,
    with nothing else using it. On a machine whose cores both systems share,
    processing is bound by the CPU each run costs on both sides.
    """

    def __init__(self) -> None:
        self.process, self.server = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        times = os.times()
        server = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if stat[stat.index("(") + 1 : stat.rindex(")")] == "postgres":
                    fields = stat[stat.rindex(")") + 2 :].split()
                    server += int(fields[11]) + int(fields[12])  # utime, stime in ticks
        return times.user + times.system, server / os.sysconf("SC_CLK_TCK")

    def note(self, runs: int, *, server: bool) -> str:
        """CPU per run since this clock started, as a note of the results table."""
        process, server_now = self._now()
        mine = f"this process {(process - self.process) / runs * 1e6:.1f} us"
        if not server:
            return f"CPU per run while processing: {mine}"
        theirs = f"PostgreSQL {(server_now - self.server) / runs * 1e6:.1f} us"
        return f"CPU per run while processing: {mine}, {theirs}"


PROGRESS = "progress: "


def progress(message: str) -> None:
    print(f"{PROGRESS}{message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------


def baseline_postgres(args: argparse.Namespace, result: Result) -> None:
    import psycopg

    url = pg_url(args.pg, args.database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE commits (id bigserial PRIMARY KEY, v integer NOT NULL)")
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < BASELINE_SECONDS:
            conn.execute("INSERT INTO commits (v) VALUES (%s)", (count,))
            count += 1
        result.processing = rate(count, time.perf_counter() - start)
    result.notes.append(f"{count} autocommit INSERTs, one connection, synchronous_commit=on")


def baseline_mariadb(args: argparse.Namespace, result: Result) -> None:
    with mariadb_connect(args.mariadb, args.database) as conn, conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE commits (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL)"
            " ENGINE=InnoDB"
        )
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < BASELINE_SECONDS:
            cursor.execute("INSERT INTO commits (v) VALUES (%s)", (count,))
            count += 1
        result.processing = rate(count, time.perf_counter() - start)
        cursor.execute("SELECT @@innodb_flush_log_at_trx_commit")
        (flush,) = cursor.fetchone()
    result.notes.append(
        f"{count} autocommit INSERTs, one connection, innodb_flush_log_at_trx_commit={flush}"
    )


def baseline_sqlite(args: argparse.Namespace, result: Result) -> None:
    path = Path(args.sqlite_dir) / "commits.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE commits (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < BASELINE_SECONDS:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO commits (v) VALUES (?)", (count,))
            conn.execute("COMMIT")
            count += 1
        result.processing = rate(count, time.perf_counter() - start)
    finally:
        conn.close()
    result.notes.append(f"{count} commits, WAL, synchronous=FULL, file in {args.sqlite_dir}")


# ---------------------------------------------------------------------------
# ferryman
# ---------------------------------------------------------------------------


def run_ferryman_controls(args: argparse.Namespace, result: Result) -> None:
    run_ferryman(args, result, controls=True)


def run_ferryman_tuned(args: argparse.Namespace, result: Result) -> None:
    run_ferryman(args, result, tuned=True)


def run_ferryman(
    args: argparse.Namespace, result: Result, *, controls: bool = False, tuned: bool = False
) -> None:
    import sqlalchemy as sa

    import ferryman as fm
    from ferryman.store.schema import run_events, runs

    if args.store == "postgres":
        url = pg_url(args.pg, args.database, "postgresql+psycopg")
        app = fm.App(url, create=True)
    elif args.store == "mariadb":
        app = fm.App(mariadb_url(args.mariadb, args.database), create=True)
    else:
        url = f"sqlite:///{Path(args.sqlite_dir) / 'ferryman.db'}"
        app = fm.App(url)
    first = FirstStart()

    limits: dict[str, Any] = {"rate": fm.Rate(10_000_000, per=1.0)} if controls else {}

    @app.job(name="noop", **limits)
    def noop(ctx: fm.JobContext, payload: Any) -> None:
        first.hit()

    def request(key: str, i: int) -> fm.RunRequest:
        if not controls:
            return fm.RunRequest(key, {"i": i})
        return fm.RunRequest(key, {"i": i}, priority=i % 3, concurrency_key=key)

    _ = app.store  # open (and migrate) the store outside the timings

    result.one_by_one, result.bare_commits = submits_next_to_bare_commits(
        args, lambda i: app.submit("noop", request(f"single-{i}", i))
    )
    progress(
        f"enqueue 1-by-1: {result.one_by_one:,.0f} runs/s, bare single-row commits "
        f"interleaved with them {result.bare_commits:,.0f}/s"
    )
    result.notes.append(
        f"1-by-1 timed in {INTERLEAVED_BLOCKS} turns with bare single-row commits on the same "
        f"database server: {result.bare_commits:,.0f}/s"
    )
    result.threads, result.one_thread = threads_next_to_one_thread(
        app, request, args.threads, args.one_by_one
    )
    progress(
        f"enqueue 1-by-1 from {args.threads} threads: {result.threads:,.0f} runs/s "
        f"({result.threads / result.one_thread:.2f}x one thread timed in turns with them: "
        f"{result.one_thread:,.0f} runs/s)"
    )
    # Start the batched phase from an empty queue, as the peers do.
    with app.engine.begin() as conn:
        if args.store == "postgres":
            # CASCADE: other tables (transfers) refer to runs; they are empty here.
            conn.execute(sa.text(f"TRUNCATE {run_events.name}, {runs.name} CASCADE"))
        else:
            conn.execute(run_events.delete())
            conn.execute(runs.delete())

    requests = [request(f"run-{i}", i) for i in range(args.runs)]
    start = time.perf_counter()
    for offset in range(0, args.runs, args.batch_size):
        app.submit("noop", *requests[offset : offset + args.batch_size])
    result.batched = rate(args.runs, time.perf_counter() - start)
    progress(f"enqueue batched: {result.batched:,.0f} runs/s")
    if args.analyze:
        analyze_store(app, args.store)

    # The defaults row passes no worker keyword at all: what `ferryman work` does.
    tuning = (
        {
            "concurrency": args.concurrency,
            "prefetch": args.prefetch,
            "claim_batch": args.claim_batch,
        }
        if tuned
        else {}
    )
    cpu = CpuClock()
    called = time.perf_counter()
    report = app.work(
        until_idle=True, processes=args.processes or None, handle_signals=False, **tuning
    )
    end = time.perf_counter()
    if not args.processes:  # forked workers' CPU is theirs, not this process's
        result.notes.append(cpu.note(args.runs, server=args.store == "postgres"))
        progress(result.notes[-1])
    with app.engine.connect() as conn:
        succeeded = conn.execute(
            sa.select(sa.func.count()).select_from(runs).where(runs.c.status == "succeeded")
        ).scalar_one()
    if succeeded != args.runs:
        app.close()
        raise RuntimeError(f"only {succeeded} of {args.runs} runs succeeded: {report}")
    if first.at is None:  # processes=N: the jobs ran in forked children
        result.processing = rate(args.runs, end - called)
        result.notes.append("processing timed from the work() call (forked workers)")
    else:
        result.processing = rate(args.runs, end - first.at)
    if controls and not args.processes:
        # The same job without controls, registered only now: the row's own
        # figure is that of a worker of the one job, as the other rows' are.
        plain_first = FirstStart()

        @app.job(name="noop_plain")
        def noop_plain(ctx: fm.JobContext, payload: Any) -> None:
            plain_first.hit()

        def plain(key: str, i: int) -> fm.RunRequest:
            return fm.RunRequest(key, {"i": i})

        turns = {"noop_plain": (plain, plain_first), "noop": (request, first)}
        result.plain_in_turns, result.controls_in_turns = processing_in_turns(app, args, turns)
        result.notes.append(
            f"processing at the defaults in {PROCESSING_TURNS} turns of "
            f"{args.runs // PROCESSING_TURNS:,} runs each, on this store: this job "
            f"{fmt(result.controls_in_turns)}/s, the same job without controls "
            f"{fmt(result.plain_in_turns)}/s"
        )
        progress(result.notes[-1])
    app.close()
    result.notes.append(
        ("priorities 0-2, a concurrency key per run, rate limit 10,000,000/s; " if controls else "")
        + (" ".join(f"{k}={v}" for k, v in tuning.items()) if tuned else "worker defaults")
        + (f" processes={args.processes}" if args.processes else "")
        + "; done = work() returned, all 'succeeded' (counted)"
    )


# Blocks the 1-by-1 submits and the bare commits next to them are timed in,
# alternating, so that both meet the same load of a shared machine.
INTERLEAVED_BLOCKS = 8
# Turns the processing with queue controls and without them are timed in, alternating.
PROCESSING_TURNS = 2


def analyze_store(app: Any, store: str) -> None:
    """Fresh planner statistics on ferryman's store, as after an enqueue (``analyze``)."""
    import sqlalchemy as sa

    from ferryman.store.schema import run_events, runs

    with app.engine.begin() as conn:
        if store == "mariadb":
            conn.execute(sa.text(f"ANALYZE TABLE {runs.name}, {run_events.name}")).all()
        else:
            conn.execute(sa.text("ANALYZE"))


def processing_in_turns(
    app: Any, args: argparse.Namespace, turns: dict[str, tuple[Callable[[str, int], Any], Any]]
) -> tuple[float, ...]:
    """Runs/s of each job of ``turns`` (job: its requests and its FirstStart), processed
    at the defaults in ``PROCESSING_TURNS`` alternating turns on the same store, so that
    both meet the same load of a shared machine: rows timed one after the other did
    not (the controls' ratio to plain moved from 0.60 to 0.82 in three runs).

    Each turn enqueues a share of ``--runs`` for one job and times ``app.work`` on
    that job alone, from its first job's start to the return, as the rows do.
    """
    per_turn = max(1, args.runs // PROCESSING_TURNS)
    seconds = dict.fromkeys(turns, 0.0)
    for turn in range(PROCESSING_TURNS):
        order = list(turns) if turn % 2 == 0 else list(reversed(turns))
        for job in order:
            make, first = turns[job]
            requests = [make(f"turn-{turn}-{i}", i) for i in range(per_turn)]
            for offset in range(0, per_turn, args.batch_size):
                app.submit(job, *requests[offset : offset + args.batch_size])
            if args.analyze:
                analyze_store(app, args.store)
            first.at = None
            report = app.work(until_idle=True, jobs=[job], handle_signals=False)
            ended = time.perf_counter()
            if first.at is None or report.succeeded != per_turn:
                raise RuntimeError(f"{job}: {report.succeeded} of {per_turn} runs succeeded")
            seconds[job] += ended - first.at
    return tuple(rate(per_turn * PROCESSING_TURNS, seconds[job]) for job in turns)


def submits_next_to_bare_commits(
    args: argparse.Namespace, submit: Callable[[int], Any]
) -> tuple[float, float]:
    """Runs/s of one submit per call, and bare single-row commits/s, timed in turns."""
    bare = BareCommits(args)
    per_block = max(1, args.one_by_one // INTERLEAVED_BLOCKS)
    submitted = submit_seconds = bare_seconds = 0.0
    try:
        for _ in range(INTERLEAVED_BLOCKS):
            start = time.perf_counter()
            for _ in range(per_block):
                bare.commit()
            bare_seconds += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(per_block):
                submit(int(submitted))
                submitted += 1
            submit_seconds += time.perf_counter() - start
    finally:
        bare.close()
    total = per_block * INTERLEAVED_BLOCKS
    return rate(total, submit_seconds), rate(total, bare_seconds)


class BareCommits:
    """Single-row commits on the store's database (server), as the baselines make them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.store = args.store
        self.count = 0
        if args.store == "postgres":
            import psycopg

            self.conn: Any = psycopg.connect(pg_url(args.pg, args.database), autocommit=True)
            self.conn.execute("CREATE TABLE bare_commits (id bigserial PRIMARY KEY, v integer)")
            self.sql = "INSERT INTO bare_commits (v) VALUES (%s)"
        elif args.store == "mariadb":
            self.conn = mariadb_connect(args.mariadb, args.database)
            self.conn.cursor().execute(
                "CREATE TABLE bare_commits (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT)"
                " ENGINE=InnoDB"
            )
            self.sql = "INSERT INTO bare_commits (v) VALUES (%s)"
        else:
            self.conn = sqlite3.connect(
                Path(args.sqlite_dir) / "bare_commits.db", isolation_level=None
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("CREATE TABLE bare_commits (id INTEGER PRIMARY KEY, v INTEGER)")

    def commit(self) -> None:
        self.count += 1
        if self.store == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO bare_commits (v) VALUES (?)", (self.count,))
            self.conn.execute("COMMIT")
        elif self.store == "postgres":
            self.conn.execute(self.sql, (self.count,))
        else:
            self.conn.cursor().execute(self.sql, (self.count,))

    def close(self) -> None:
        self.conn.close()


def threads_next_to_one_thread(
    app: Any, request: Callable[[str, int], Any], threads: int, total: int
) -> tuple[float, float]:
    """Runs/s of ``total`` submits, one per call, from ``threads`` threads at once, and
    from one thread, timed in turns (so that both meet the same disk and the same load).

    The threads live through all the turns and wait on a barrier while the one
    thread submits; each turn starts them together.
    """
    import threading

    per_thread = max(1, total // (threads * INTERLEAVED_BLOCKS))
    per_block = per_thread * threads
    start = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def submitter(t: int) -> None:
        for block in range(INTERLEAVED_BLOCKS):
            start.wait()
            try:
                for i in range(per_thread):
                    app.submit("noop", request(f"thread-{block}-{t}-{i}", i))
            except BaseException as exc:
                errors.append(exc)
            done.wait()

    workers = [threading.Thread(target=submitter, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    threaded_seconds = alone_seconds = 0.0
    try:
        for block in range(INTERLEAVED_BLOCKS):
            began = time.perf_counter()
            for i in range(per_block):
                app.submit("noop", request(f"alone-{block}-{i}", i))
            alone_seconds += time.perf_counter() - began
            start.wait()
            began = time.perf_counter()
            done.wait()
            threaded_seconds += time.perf_counter() - began
    except BaseException:
        start.abort()  # the threads stop waiting for turns that will not come
        done.abort()
        raise
    finally:
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]
    runs = per_block * INTERLEAVED_BLOCKS
    return rate(runs, threaded_seconds), rate(runs, alone_seconds)


# ---------------------------------------------------------------------------
# PgQueuer
# ---------------------------------------------------------------------------


async def _count_until(url: str, query: str, target: int, done: Callable[[], None]) -> float:
    """Poll ``query`` (a count) on its own connection until it reaches ``target``."""
    async with await _psycopg_connect(url) as conn:
        while True:
            cursor = await conn.execute(query)  # type: ignore[arg-type]
            row = await cursor.fetchone()
            if row is not None and row[0] >= target:
                at = time.perf_counter()
                done()
                return at
            await asyncio.sleep(POLL_SECONDS)


async def _pgqueuer(args: argparse.Namespace, result: Result) -> None:
    from datetime import timedelta

    from pgqueuer import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    url = pg_url(args.pg, args.database)
    try:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver

        connection = await asyncpg.connect(url)
        driver: Any = AsyncpgDriver(connection)
        result.notes.append("asyncpg driver")
    except ImportError:
        import psycopg
        from pgqueuer.db import PsycopgDriver

        connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
        driver = PsycopgDriver(connection)
        result.notes.append("psycopg driver (asyncpg not installed)")

    queries = Queries(driver)
    await queries.install()

    start = time.perf_counter()
    for i in range(args.one_by_one):
        await queries.enqueue("noop", json.dumps({"i": i}).encode())
    result.one_by_one = rate(args.one_by_one, time.perf_counter() - start)
    progress(f"enqueue 1-by-1: {result.one_by_one:,.0f} runs/s")
    await queries.clear_queue()

    payloads = [json.dumps({"i": i}).encode() for i in range(args.runs)]
    start = time.perf_counter()
    for offset in range(0, args.runs, args.batch_size):
        chunk = payloads[offset : offset + args.batch_size]
        await queries.enqueue(["noop"] * len(chunk), list(chunk), [0] * len(chunk))
    result.batched = rate(args.runs, time.perf_counter() - start)
    progress(f"enqueue batched: {result.batched:,.0f} runs/s")
    if args.analyze:
        analyze(url)

    qm = QueueManager(queries)
    first = FirstStart()

    @qm.entrypoint("noop")
    async def noop(job: Any) -> None:
        first.hit()

    # A job's row leaves the queue table only when its buffered ack is flushed.
    poller = asyncio.create_task(
        _count_until(
            url, f"SELECT {args.runs} - count(*) FROM pgqueuer", args.runs, qm.shutdown.set
        )
    )
    cpu = CpuClock()
    await qm.run(
        batch_size=args.pgqueuer_batch_size,
        mode=QueueExecutionMode.drain,
        dequeue_timeout=timedelta(seconds=0.1),
    )
    end = await asyncio.wait_for(poller, timeout=60)
    result.notes.append(cpu.note(args.runs, server=True))
    progress(result.notes[-1])
    assert first.at is not None
    result.processing = rate(args.runs, end - first.at)
    async with await _psycopg_connect(url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM pgqueuer")
        row = await cursor.fetchone()
        left = row[0] if row else -1
    if left:
        raise RuntimeError(f"{left} jobs still in the pgqueuer table")
    await connection.close()
    result.notes.append(
        f"batch_size={args.pgqueuer_batch_size}; done = queue table empty (a job's row is "
        "deleted when its ack is flushed)"
    )


async def _psycopg_connect(url: str) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(url, autocommit=True)


def run_pgqueuer(args: argparse.Namespace, result: Result) -> None:
    asyncio.run(_pgqueuer(args, result))


# ---------------------------------------------------------------------------
# Procrastinate
# ---------------------------------------------------------------------------


async def _procrastinate(args: argparse.Namespace, result: Result) -> None:
    import procrastinate

    url = pg_url(args.pg, args.database)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
    first = FirstStart()

    @app.task(name="noop", queue="bench")
    async def noop(i: int) -> None:
        first.hit()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()

        start = time.perf_counter()
        for i in range(args.one_by_one):
            await noop.defer_async(i=i)
        result.one_by_one = rate(args.one_by_one, time.perf_counter() - start)
        progress(f"enqueue 1-by-1: {result.one_by_one:,.0f} runs/s")
        async with await _psycopg_connect(url) as conn:
            await conn.execute("TRUNCATE procrastinate_jobs CASCADE")

        kwargs = [{"i": i} for i in range(args.runs)]
        start = time.perf_counter()
        for offset in range(0, args.runs, args.batch_size):
            await noop.batch_defer_async(*kwargs[offset : offset + args.batch_size])
        result.batched = rate(args.runs, time.perf_counter() - start)
        progress(f"enqueue batched: {result.batched:,.0f} runs/s")
        if args.analyze:
            analyze(url)

        finished = asyncio.Event()
        poller = asyncio.create_task(
            _count_until(
                url,
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
                args.runs,
                finished.set,
            )
        )
        await app.run_worker_async(
            queues=["bench"],
            concurrency=args.procrastinate_concurrency,
            wait=False,
            install_signal_handlers=False,
            fetch_job_polling_interval=0.1,
        )
        end = await asyncio.wait_for(poller, timeout=60)
    assert first.at is not None
    result.processing = rate(args.runs, end - first.at)
    result.notes.append(
        f"concurrency={args.procrastinate_concurrency}, async task; done = {args.runs} "
        "jobs 'succeeded'"
    )


def run_procrastinate(args: argparse.Namespace, result: Result) -> None:
    asyncio.run(_procrastinate(args, result))


# ---------------------------------------------------------------------------
# DBOS
# ---------------------------------------------------------------------------


def run_dbos(args: argparse.Namespace, result: Result) -> None:
    import psycopg
    from dbos import DBOS

    url = pg_url(args.pg, args.database)
    DBOS(
        config={
            "name": "ferryman-bench",
            "system_database_url": url,
            "log_level": "WARNING",
            "sys_db_pool_size": args.dbos_pool_size,
        }
    )
    first = FirstStart()

    @DBOS.workflow()
    def noop(i: int) -> None:
        first.hit()

    DBOS.launch()
    try:
        # The queue is registered only after the runs are in: until then no
        # worker thread dequeues from it, so enqueueing and processing don't mix.
        start = time.perf_counter()
        for i in range(args.runs):
            DBOS.enqueue_workflow("bench", noop, i)
        result.one_by_one = rate(args.runs, time.perf_counter() - start)
        progress(f"enqueue 1-by-1: {result.one_by_one:,.0f} runs/s")
        result.notes.append(
            f"no batch enqueue API: all {args.runs} runs enqueued 1-by-1 (that rate is "
            "measured on all of them)"
        )
        if first.at is not None:
            raise RuntimeError("workflows started before their queue was registered")
        if args.analyze:
            analyze(url)

        DBOS.register_queue(
            "bench",
            worker_concurrency=args.dbos_worker_concurrency,
            polling_interval_sec=args.dbos_polling_interval,
        )
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM dbos.workflow_status "
                    "WHERE queue_name = 'bench' AND status = 'SUCCESS'"
                ).fetchone()
                if row is not None and row[0] >= args.runs:
                    end = time.perf_counter()
                    break
                time.sleep(POLL_SECONDS)
    finally:
        DBOS.destroy(destroy_registry=True)
    assert first.at is not None
    result.processing = rate(args.runs, end - first.at)
    result.notes.append(
        f"worker_concurrency={args.dbos_worker_concurrency} "
        f"polling_interval_sec={args.dbos_polling_interval}; done = {args.runs} "
        "workflows 'SUCCESS'"
    )


# ---------------------------------------------------------------------------
# child process entry
# ---------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace, result: Result) -> None:
    if args.store == "postgres":
        baseline_postgres(args, result)
    elif args.store == "mariadb":
        baseline_mariadb(args, result)
    else:
        baseline_sqlite(args, result)


RUNNERS: dict[str, Callable[[argparse.Namespace, Result], None]] = {
    "baseline": run_baseline,
    "ferryman": run_ferryman,
    "ferryman-tuned": run_ferryman_tuned,
    "ferryman-controls": run_ferryman_controls,
    "pgqueuer": run_pgqueuer,
    "procrastinate": run_procrastinate,
    "dbos": run_dbos,
}


class Stopped(Exception):
    """The parent's time limit for this child ran out."""


def child(args: argparse.Namespace) -> int:
    result = Result(args.child, args.store)
    started = time.perf_counter()

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(f"stopped after the {args.timeout:.0f} s limit (--timeout)")

    # On its time limit the parent sends SIGTERM first: the figures measured so
    # far are still written.
    signal.signal(signal.SIGTERM, stop)
    try:
        RUNNERS[args.child](args, result)
    except ImportError as exc:
        result.error = f"not installed: {exc}"
    except Stopped as exc:
        result.error = str(exc)
    except Exception as exc:
        traceback.print_exc()
        result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    result.seconds = time.perf_counter() - started
    Path(args.result_file).write_text(json.dumps(asdict(result)))
    return 0


# ---------------------------------------------------------------------------
# parent: run every system in turn, then print the table
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def environment(args: argparse.Namespace, system: str, store: str) -> Iterator[list[str]]:
    """A fresh database (or SQLite directory) for one child; extra argv for it."""
    if store == "postgres":
        name = f"{DB_PREFIX}{system}"
        create_database(args.pg, name)
        try:
            yield ["--database", name]
        finally:
            with contextlib.suppress(Exception):
                drop_database(args.pg, name)
    elif store == "mariadb":
        name = f"{DB_PREFIX}{system}"
        drop = f"DROP DATABASE IF EXISTS `{name}`"
        mariadb_execute(args.mariadb, drop, f"CREATE DATABASE `{name}`")
        try:
            yield ["--database", name]
        finally:
            with contextlib.suppress(Exception):
                mariadb_execute(args.mariadb, drop)
    else:
        directory = tempfile.mkdtemp(prefix=f"{DB_PREFIX}{system}_", dir=args.sqlite_parent)
        try:
            yield ["--sqlite-dir", directory]
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def run_child(args: argparse.Namespace, system: str, store: str, argv: list[str]) -> Result:
    with (
        tempfile.NamedTemporaryFile(suffix=".json", delete=False) as result_file,
        tempfile.NamedTemporaryFile(suffix=".log", delete=False) as log_file,
    ):
        pass
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        system,
        "--store",
        store,
        "--result-file",
        result_file.name,
        *passthrough(args),
        *argv,
    ]
    started = time.perf_counter()
    with open(log_file.name, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        try:
            code: int | None = process.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            code = None
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = Path(log_file.name).read_text(errors="replace")
    os.unlink(log_file.name)
    try:
        data = json.loads(Path(result_file.name).read_text())
        result = Result(**data)
    except (OSError, ValueError):
        result = Result(system, store)
        result.error = (
            f"timed out after {args.timeout:.0f} s" if code is None else f"exited with {code}"
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(result_file.name)
    result.seconds = time.perf_counter() - started
    for line in output.splitlines():
        if line.startswith(PROGRESS):
            print(f"    {line.removeprefix(PROGRESS)}")
    if result.error:
        tail = "\n".join(output.strip().splitlines()[-15:])
        print(f"    FAILED: {result.error}" + (f"\n{tail}" if tail else ""))
    return result


def passthrough(args: argparse.Namespace) -> list[str]:
    options = [
        "runs",
        "one_by_one",
        "threads",
        "batch_size",
        "pg",
        "mariadb",
        "concurrency",
        "prefetch",
        "claim_batch",
        "pgqueuer_batch_size",
        "procrastinate_concurrency",
        "dbos_worker_concurrency",
        "dbos_polling_interval",
        "dbos_pool_size",
        "timeout",
    ]
    argv = []
    for option in options:
        argv += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    if args.processes:
        argv += ["--processes", str(args.processes)]
    argv.append("--analyze" if args.analyze else "--no-analyze")
    return argv


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def print_table(args: argparse.Namespace, baselines: list[Result], results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(160, shutil.get_terminal_size().columns))
    table = Table(
        title=(
            f"Queue throughput, runs/s ({args.runs:,} no-op runs; 1-by-1 enqueue timed on "
            f"{args.one_by_one:,} and extrapolated; batches of {args.batch_size:,}"
            + ("; ANALYZE between enqueue and processing)" if args.analyze else ")")
        ),
        show_lines=True,
    )
    table.add_column("system")
    table.add_column("store")
    table.add_column("enqueue 1-by-1", justify="right")
    table.add_column(f"1-by-1, {args.threads} threads", justify="right")
    table.add_column("enqueue batched", justify="right")
    table.add_column("processing", justify="right")
    table.add_column("notes", overflow="fold", max_width=80)
    for result in results:
        notes = list(result.notes)
        if result.system in DURABILITY:
            notes.insert(0, f"acks: {DURABILITY[result.system]}")
        if result.error:
            notes.insert(0, f"FAILED: {result.error}")
        table.add_row(
            result.system,
            result.store,
            fmt(result.one_by_one),
            fmt(result.threads)
            + (
                f"\n({result.threads / (result.one_thread or result.one_by_one):.1f}x)"
                if result.threads and (result.one_thread or result.one_by_one)
                else ""
            ),
            fmt(result.batched),
            fmt(result.processing),
            "\n".join(notes),
        )
    console.print(table)
    for baseline in baselines:
        label = STORE_LABELS[baseline.store]
        value = f"FAILED: {baseline.error}" if baseline.error else fmt(baseline.processing)
        console.print(
            f"{label} single-row commits/s: {value}  ({'; '.join(baseline.notes)})", markup=False
        )
    verdicts = targets(results, baselines)
    if verdicts:
        console.print("Targets for ferryman:")
        for line in verdicts:
            console.print(f"  {line}", markup=False)


def targets(results: list[Result], baselines: list[Result]) -> list[str]:
    def get(system: str, store: str) -> Result | None:
        return next((r for r in results if r.system == system and r.store == store), None)

    lines = []
    pg = get("ferryman", "postgres")
    peers = [r for r in results if r.system in POSTGRES_ONLY and r.processing]
    if pg and pg.processing and peers:
        best = max(peers, key=lambda r: r.processing or 0.0)
        ratio = pg.processing / (best.processing or 1.0)
        lines.append(
            f"[{'met' if ratio >= 1.5 else 'MISSED'}] PostgreSQL processing at the defaults "
            f"{fmt(pg.processing)} >= 1.5x the fastest peer, tuned, in this run "
            f"({best.system}, {fmt(best.processing)}; ratio {ratio:.2f})"
        )
    lines.extend(enqueue_targets(results, baselines))
    for store in ("postgres", "sqlite", "mariadb"):
        controlled = get("ferryman-controls", store)
        if controlled and controlled.controls_in_turns and controlled.plain_in_turns:
            ratio = controlled.controls_in_turns / controlled.plain_in_turns
            lines.append(
                f"[{'met' if ratio >= 0.9 else 'MISSED'}] {store} processing with queue "
                f"controls {fmt(controlled.controls_in_turns)} within 10 % of the same job "
                f"without them {fmt(controlled.plain_in_turns)}, timed in turns "
                f"(ratio {ratio:.2f})"
            )
    lite = get("ferryman", "sqlite")
    if lite and lite.processing:
        ok = lite.processing >= 10_000
        lines.append(
            f"[{'met' if ok else 'MISSED'}] SQLite processing at the defaults "
            f"{fmt(lite.processing)} >= 10,000"
        )
    return lines


def enqueue_targets(results: list[Result], baselines: list[Result]) -> list[str]:
    """Submits: against the store's bare commits, one thread, and PgQueuer, in this run."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = []
    commits = {b.store: b.processing for b in baselines if b.processing}
    pgqueuer = next((r for r in results if r.system == "pgqueuer" and not r.error), None)
    for r in results:
        if r.system != "ferryman" or r.error or not r.one_by_one:
            continue
        bare = r.bare_commits or commits.get(r.store)
        if bare:
            ratio = r.one_by_one / bare
            lines.append(
                f"[{verdict(ratio >= 0.8)}] {r.store} 1-by-1 submit {fmt(r.one_by_one)} >= 80 % "
                f"of bare single-row commits {fmt(bare)} timed in turns with them "
                f"(ratio {ratio:.2f})"
            )
        one_thread = r.one_thread or r.one_by_one
        if r.threads and one_thread:
            ratio = r.threads / one_thread
            lines.append(
                f"[{verdict(ratio >= 3)}] {r.store} 1-by-1 from threads {fmt(r.threads)} >= 3x "
                f"one thread {fmt(one_thread)} timed in turns with them (ratio {ratio:.2f})"
            )
        if r.store == "postgres" and pgqueuer and pgqueuer.one_by_one and pgqueuer.batched:
            for what, ours, theirs in (
                ("1-by-1", r.one_by_one, pgqueuer.one_by_one),
                ("batched", r.batched or 0.0, pgqueuer.batched),
            ):
                lines.append(
                    f"[{verdict(ours >= theirs)}] postgres {what} enqueue {fmt(ours)} >= "
                    f"PgQueuer's {fmt(theirs)} (ratio {ours / theirs:.2f})"
                )
        if r.store == "sqlite" and r.batched:
            lines.append(
                f"[{verdict(r.batched >= 60_000)}] sqlite batched enqueue {fmt(r.batched)} "
                ">= 60,000"
            )
    return lines


def parent(args: argparse.Namespace) -> int:
    check_loopback(args.pg)
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SYSTEMS)
    unknown = sorted(set(only) - set(SYSTEMS))
    if unknown:
        raise SystemExit(
            f"--only: unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}"
        )
    stores = {"both": ["postgres", "sqlite"], "all": ["postgres", "sqlite", "mariadb"]}.get(
        args.store, [args.store]
    )
    if args.one_by_one > args.runs:
        args.one_by_one = args.runs
    plan = [
        (system, store)
        for store in stores
        for system in SYSTEMS
        if system in only and not (store != "postgres" and system in POSTGRES_ONLY)
    ]
    if "postgres" in stores:
        try:
            admin_execute(args.pg, "SELECT 1")
        except Exception as exc:
            raise SystemExit(f"cannot reach PostgreSQL at {args.pg}: {exc}") from exc
    if "mariadb" in stores:
        check_mariadb_loopback(args.mariadb)
        try:
            mariadb_execute(args.mariadb, "SELECT 1")
        except Exception as exc:
            raise SystemExit(f"cannot reach MariaDB at {args.mariadb}: {exc}") from exc

    print(
        f"ferryman queue benchmark: {args.runs:,} runs, stores: {', '.join(stores)}, "
        f"systems: {', '.join(s for s in SYSTEMS if s in only)}; one system at a time"
    )
    busy = cpu_busy()
    print(f"{os.cpu_count()} CPUs, {busy:.0%} busy in the second before starting")
    if busy > BUSY_CPU:
        print("WARNING: other processes are using the CPUs; every figure below will be low")
    baselines = []
    for store in stores:
        print(f"[baseline] single-row commits on {store} ...", flush=True)
        with environment(args, "baseline", store) as argv:
            baselines.append(run_child(args, "baseline", store, argv))
    results = []
    for system, store in plan:
        print(f"[{system}] on {store} ...", flush=True)
        with environment(args, system, store) as argv:
            result = run_child(args, system, store, argv)
        print(f"    {result.seconds:.1f} s", flush=True)
        results.append(result)
    print()
    print_table(args, baselines, results)
    if args.json:
        Path(args.json).write_text(
            json.dumps([asdict(r) for r in baselines + results], indent=2) + "\n"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=20_000, help="runs to enqueue and process")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {','.join(SYSTEMS)}"
    )
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres", "mariadb", "both", "all"],
        default="both",
        help="both: postgres and sqlite; all: those and mariadb",
    )
    parser.add_argument(
        "--one-by-one",
        type=int,
        default=2_000,
        help="runs enqueued one call each (the rate is extrapolated from these)",
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="threads submitting 1-by-1 at once (ferryman)"
    )
    parser.add_argument("--batch-size", type=int, default=1_000, help="runs per batched enqueue")
    parser.add_argument("--pg", default=DEFAULT_PG, help="admin URL of the loopback PostgreSQL")
    parser.add_argument(
        "--mariadb", default=DEFAULT_MARIADB, help="admin URL of the loopback MariaDB"
    )
    parser.add_argument(
        "--sqlite-parent",
        default=None,
        help="where SQLite files go (default: the system temporary directory)",
    )
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds per system and store")
    parser.add_argument(
        "--analyze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ANALYZE the database between enqueueing and processing (not timed)",
    )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    ferryman = parser.add_argument_group("ferryman worker (the ferryman-tuned row)")
    ferryman.add_argument("--concurrency", type=int, default=4)
    ferryman.add_argument("--prefetch", type=int, default=2000)
    ferryman.add_argument("--claim-batch", type=int, default=1000)
    ferryman.add_argument("--processes", type=int, default=0, help="0: one process")
    peers = parser.add_argument_group("peers")
    peers.add_argument("--pgqueuer-batch-size", type=int, default=250)
    peers.add_argument("--procrastinate-concurrency", type=int, default=20)
    peers.add_argument("--dbos-worker-concurrency", type=int, default=200)
    peers.add_argument("--dbos-polling-interval", type=float, default=0.05)
    peers.add_argument("--dbos-pool-size", type=int, default=20)
    internal = parser.add_argument_group("internal (one child process)")
    internal.add_argument("--child", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    internal.add_argument("--result-file", help=argparse.SUPPRESS)
    internal.add_argument("--database", help=argparse.SUPPRESS)
    internal.add_argument("--sqlite-dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
