"""Does the store stay fast as it grows? 100,000 runs against 10,000,000, and pruning.

For each size, a store is bulk-generated (PostgreSQL: ``INSERT ... SELECT
FROM generate_series`` in the server, a million rows per transaction;
SQLite: ``executemany`` from a generator), then, in this order:

* **submit**: ``app.submit`` of one run, one call at a time (p95 of N calls);
* **claim**: ``Store.claim`` of one due run from the seeded queue (p95 of N
  claims; 3 % of the runs are queued; each claimed run then succeeds, untimed);
* **every dashboard and API endpoint** of ``bench/web.py`` against the real
  ``ferryman serve`` (p95), the first overview and the first ``/metrics``
  after start timed on their own, and how long the server takes to finish
  warming up (counting every run and folding the whole log, on a store that
  never saved either): the endpoints are timed after that, so that each
  size's p95 is that of a warmed-up server, not of one still reading its
  whole store in the background (at 10,000,000 runs, about 40 s);
* **bytes per run** in the store (runs and their processing log), before and
  after ``ferryman prune --finished-before 30d`` (timed).

Submits, claims and the endpoints' requests go to every size in turns (one
to each store, then the next round), so that the load of the moment weighs
on each size alike; the starts are timed one size after the other.

Runs are spread over the last 60 days, newest ids last, 90 % succeeded, 4 %
failed, 2 % dead, the rest queued or running, over ten jobs; one run in ten
has a processing log of three events (the layout of ``bench/web.py``). The
last table prints each figure at every size and the ratio of the largest to
the smallest (the target: at most 1.25), and with three sizes or more to the
one before the largest as well.

Seeded stores are kept between runs (the database ``ferryman_bench_scale_<N>``,
or ``<tmp>/ferryman_bench_scale_<N>/store.db``); ``--reseed`` builds them again,
and pruning changes them (a later run reseeds a pruned store by itself).

    .venv/bin/python bench/scale.py [--sizes 100000,10000000] [--stores postgres,sqlite]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import json
import random
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench import timing, web  # noqa: E402  (after the path set-up above)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DAYS = 60
SPAN = DAYS * 24 * 3600.0
# The seed's running runs hold leases that outlast any run of the bench on a kept
# store: expired, every claim would take one over instead of claiming a queued run.
SEEDED_LEASE = 30 * 24 * 3600.0
CHUNK = 1_000_000  # rows per transaction while seeding PostgreSQL
FINISHED = ("succeeded", "failed", "dead")


PREFIX = "ferryman_bench_scale"  # --name


def name_for(size: int) -> str:
    return f"{PREFIX}_{size}"


# -- seeding -------------------------------------------------------------------

# The status of run n, as bench/web.py's status_of, in SQL.
PG_STATUS = (
    "CASE WHEN n %% 100 < 90 THEN 'succeeded' WHEN n %% 100 < 94 THEN 'failed' "
    "WHEN n %% 100 < 96 THEN 'dead' WHEN n %% 100 < 99 THEN 'queued' ELSE 'running' END"
)

PG_RUNS = f"""
INSERT INTO ferryman_runs ({web.RUN_COLUMNS})
SELECT n, 'job-' || (n %% 10), 'key-' || n,
       '{{"n": ' || n || ', "path": "/data/in/' || n || '.xml"}}',
       s.status,
       CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END, 5, c.created,
       CASE WHEN s.status = 'running' THEN 'bench-worker-6' END,
       CASE WHEN s.status = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN s.status = 'running' THEN %(now)s + {SEEDED_LEASE} END,
       CASE WHEN s.status IN ('failed', 'dead') THEN %(traceback)s || n || %(error_end)s END,
       c.created,
       c.created + CASE WHEN s.status IN {FINISHED!r} THEN 0.05 + (n %% 7) * 0.01 ELSE 0 END,
       CASE WHEN s.status <> 'queued' THEN c.created + 0.01 END,
       CASE WHEN s.status IN {FINISHED!r} THEN c.created + 0.05 + (n %% 7) * 0.01 END,
       sha256(convert_to('job-' || (n %% 10), 'UTF8') || '\\x00'::bytea
              || convert_to('key-' || n, 'UTF8'))
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n,
     LATERAL (SELECT {PG_STATUS} AS status) AS s,
     LATERAL (SELECT %(now)s - {SPAN} + {SPAN} * n / %(size)s AS created) AS c
"""

PG_EVENTS = f"""
INSERT INTO ferryman_run_events ({web.EVENT_COLUMNS})
SELECT n, e.kind, %(now)s - {SPAN} + {SPAN} * n / %(size)s + e.offset_s, e.attempt,
       e.worker || least(6, 7 * n / %(size)s), e.token, NULL
FROM generate_series(%(first)s::bigint, %(last)s::bigint, 10) AS n,
     LATERAL (SELECT {PG_STATUS} AS status) AS s,
     LATERAL (VALUES ('requested', 0.0, 0, NULL, NULL),
                     ('claimed', 0.01, 1, 'bench-worker-', 1),
                     (s.status, 0.05, 1, 'bench-worker-', 1)) AS e(kind, offset_s, attempt,
                                                                 worker, token)
WHERE e.kind NOT IN ('queued', 'running')
"""


def seed_postgres(admin: str, size: int, reseed: bool) -> str:
    from ferryman.store import upgrade

    name = name_for(size)
    url = web.pg_url(admin, name)
    sa_url = url.replace("postgresql://", "postgresql+psycopg://")
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not reseed and _seeded_pg(url, size):
        print(f"postgres {size:,}: reusing database {name} (--reseed to rebuild)", flush=True)
        upgrade(sa_url)  # a store seeded by an earlier schema: migrated with its data in place
        return sa_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(sa_url)
    started = time.perf_counter()
    now = time.time()
    for first in range(1, size + 1, CHUNK):
        values = {
            "first": first,
            "last": min(size, first + CHUNK - 1),
            "now": now,
            "size": size,
            # bench/web.py's traceback with the run's number in it, as its SQLite seed has it
            "traceback": web.TRACEBACK.split("{n}")[0],
            "error_end": web.TRACEBACK.split("{n}")[1],
        }
        with psycopg.connect(url) as conn:
            conn.execute(PG_RUNS, values)
            conn.execute(PG_EVENTS, values)
        print(f"postgres {size:,}: {values['last']:,} runs", flush=True)
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY ferryman_sensors ({web.SENSOR_COLUMNS}) FROM STDIN") as copy:
            for row in web.sensor_rows(now, 0):
                copy.write_row(row)
        with cursor.copy(f"COPY ferryman_workers ({web.WORKER_COLUMNS}) FROM STDIN") as copy:
            for row in worker_rows(now):
                copy.write_row(row)
        cursor.execute("SELECT setval('ferryman_runs_id_seq', %s)", (size,))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"postgres {size:,}: seeded in {time.perf_counter() - started:.0f} s", flush=True)
    return sa_url


def _seeded_pg(url: str, size: int) -> bool:
    """Whether the database holds the whole seed, unpruned."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM ferryman_runs WHERE id = %s", (size,)
            ).fetchone()
            events = conn.execute(
                "SELECT count(*) FROM ferryman_run_events WHERE run_id <= 20"
            ).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0] == 1 and events and events[0] > 0)


def run_rows(size: int, now: float) -> Iterator[tuple[object, ...]]:
    """bench/web.py's runs, spread over DAYS days instead of one week."""
    stretch = SPAN / web.WEEK
    for row in web.run_rows(size, now):
        values = list(row)
        for index in (7, 12, 13, 14, 15):  # available, created, updated, started, finished
            if values[index] is not None:
                values[index] = now - (now - float(values[index])) * stretch  # type: ignore[arg-type]
        if values[10] is not None:  # a running run's lease
            values[10] = now + SEEDED_LEASE
        yield tuple(values)


def event_rows(size: int, now: float) -> Iterator[tuple[object, ...]]:
    stretch = SPAN / web.WEEK
    for row in web.event_rows(size, now):
        values = list(row)
        values[2] = now - (now - float(values[2])) * stretch  # type: ignore[arg-type]
        yield tuple(values)


def worker_rows(now: float) -> Iterator[tuple[object, ...]]:
    """bench/web.py's workers, one per seventh of DAYS days instead of one a day."""
    stretch = SPAN / web.WEEK
    for row in web.worker_rows(now):
        values = list(row)
        for index in (4, 5, 6):  # started, last seen, stopped
            if values[index] is not None:
                values[index] = now - (now - float(values[index])) * stretch  # type: ignore[arg-type]
        yield tuple(values)


def seed_sqlite(size: int, reseed: bool) -> str:
    from ferryman.store import upgrade

    path = Path(tempfile.gettempdir()) / name_for(size) / "store.db"
    url = f"sqlite:///{path}"
    if path.exists() and not reseed and _seeded_sqlite(path, size):
        print(f"sqlite {size:,}: reusing {path} (--reseed to rebuild)", flush=True)
        upgrade(url)
        return url
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob("store.db*"):
        leftover.unlink()
    upgrade(url)
    started = time.perf_counter()
    now = time.time()
    web.fill_sqlite(
        path,
        [
            ("ferryman_runs", web.RUN_COLUMNS, run_rows(size, now)),
            ("ferryman_run_events", web.EVENT_COLUMNS, event_rows(size, now)),
            ("ferryman_sensors", web.SENSOR_COLUMNS, iter(web.sensor_rows(now, 0))),
            ("ferryman_workers", web.WORKER_COLUMNS, worker_rows(now)),
        ],
    )
    print(f"sqlite {size:,}: seeded in {time.perf_counter() - started:.0f} s", flush=True)
    return url


def _seeded_sqlite(path: Path, size: int) -> bool:
    conn = sqlite3.connect(path)
    try:
        (top,) = conn.execute("SELECT max(id) FROM ferryman_runs WHERE id <= ?", (size,)).fetchone()
        (events,) = conn.execute(
            "SELECT count(*) FROM ferryman_run_events WHERE run_id <= 20"
        ).fetchone()
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return bool(top == size and events)


# -- measuring -----------------------------------------------------------------


@dataclass
class Figures:
    """One store at one size: p95 in milliseconds by operation, bytes per run, prune time."""

    p95: dict[str, float] = field(default_factory=dict)
    bytes_before: float = 0.0
    bytes_after: float = 0.0
    prune_seconds: float = 0.0
    pruned: str = ""


def p95(timings: list[float]) -> float:
    return timing.percentile(timings, 0.95)


def time_submits(urls: dict[int, str], count: int) -> dict[int, list[float]]:
    """Milliseconds of ``count`` one-run ``app.submit`` calls to each store, in turns."""
    import ferryman as fm

    apps = {size: fm.App(url) for size, url in urls.items()}
    for app in apps.values():
        app.job(name="scale_submit")(_no_op)
    tag = f"{time.time_ns()}"
    timings: dict[int, list[float]] = {size: [] for size in urls}
    try:
        for app in apps.values():  # open each store's connections outside the timings
            app.submit("scale_submit", fm.RunRequest(f"{tag}-warm", None))
        for n in range(count):
            for size, app in apps.items():
                started = time.perf_counter()
                app.submit("scale_submit", fm.RunRequest(f"{tag}-{n}", {"n": n}))
                timings[size].append((time.perf_counter() - started) * 1000)
    finally:
        for app in apps.values():
            app.close()
    return timings


def _no_op(ctx: object, payload: object) -> None:
    pass


def time_claims(urls: dict[int, str], count: int) -> dict[int, list[float]]:
    """Milliseconds of ``count`` claims of one due run from each seeded queue (3 % of the
    runs are queued), in turns; each claimed run then succeeds, untimed, so that no
    lease of the bench's expires into a later run's claims."""
    from ferryman.store import Store
    from ferryman.store.run_rows import Outcome, OutcomeKind

    stores = {size: Store(url) for size, url in urls.items()}
    timings: dict[int, list[float]] = {size: [] for size in urls}
    try:
        for _ in range(count):
            for size, store in stores.items():
                started = time.perf_counter()
                claimed = store.claim(
                    worker_id="bench-scale", jobs=web.JOBS, limit=1, lease_seconds=600
                )
                timings[size].append((time.perf_counter() - started) * 1000)
                if not claimed:
                    raise SystemExit("the seeded queue ran dry: --reseed")
                succeeded = [
                    Outcome(kind=OutcomeKind.SUCCEEDED, lease=run.lease, attempt=run.attempt)
                    for run in claimed
                ]
                store.finish(succeeded, worker_id="bench-scale")
    finally:
        for store in stores.values():
            store.close()
    return timings


def pg_bytes(url: str) -> tuple[float, float]:
    """Row bytes per run (runs and their processing log, indexes left out), and relation bytes."""
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as conn:
        rows = conn.execute(
            "SELECT (SELECT sum(pg_column_size(r.*)) FROM ferryman_runs r)"
            " + coalesce((SELECT sum(pg_column_size(e.*)) FROM ferryman_run_events e), 0),"
            " pg_total_relation_size('ferryman_runs')"
            " + pg_total_relation_size('ferryman_run_events'),"
            " (SELECT count(*) FROM ferryman_runs)"
        ).fetchone()
    assert rows is not None
    return float(rows[0]) / rows[2], float(rows[1]) / rows[2]


def sqlite_bytes(url: str) -> tuple[float, float]:
    """Bytes per run of a compacted copy (``VACUUM INTO``), and of the file as it is."""
    path = Path(url.removeprefix("sqlite:///"))
    copy = path.with_name("compacted.db")
    copy.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("VACUUM INTO ?", (str(copy),))
        (count,) = conn.execute("SELECT count(*) FROM ferryman_runs").fetchone()
    finally:
        conn.close()
    compacted = copy.stat().st_size
    copy.unlink()
    return compacted / count, path.stat().st_size / count


def prune_store(url: str, finished_before: str, batch: int) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["PYTHONPATH"] = str(REPO / "src")
    started = time.perf_counter()
    command = [sys.executable, "-m", "ferryman", "--store", url, "prune"]
    completed = subprocess.run(
        [*command, "--finished-before", finished_before, "--batch", str(batch), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    counts = json.loads(completed.stdout)
    return time.perf_counter() - started, (
        f"{counts['runs']:,} runs, {counts['events']:,} log rows, {counts['payloads']:,} payloads"
    )


def warmed_up(base: str, deadline: float) -> None:
    """Wait until the server's warm-up is done: ``/metrics`` has the counters it folds
    from the processing log once it has counted every run (before, the gauges alone)."""
    import httpx

    while time.monotonic() < deadline:
        if "ferryman_run_finishes_total" in httpx.get(f"{base}/metrics", timeout=600).text:
            return
        time.sleep(0.5)
    raise SystemExit(f"{base} did not finish warming up")


def measure_stores(kind: str, urls: dict[int, str], args: argparse.Namespace) -> dict[int, Figures]:
    """Every figure of the stores of each size, those that can be timed in turns in turns.

    Submits, claims and requests to the endpoints go to each size in turn
    (one submit, claim or request to each store, then the next round), so
    that the load of the moment weighs on every size alike: timed one size
    after the other, each size saw a different machine, and the ratio moved
    with it. The starts are timed one size after the other, each server
    alone on its store.
    """
    figures = {size: Figures() for size in urls}
    chosen = [part for part in args.endpoints.split(",") if part]
    if not chosen:
        for size, timings in time_submits(urls, args.submits).items():
            figures[size].p95["submit (one run)"] = p95(timings)
        for size, timings in time_claims(urls, args.claims).items():
            figures[size].p95["claim (one run)"] = p95(timings)
    servers: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for size, url in urls.items():
            web.forget_counts(url)  # the first start counts every run and folds the whole log
            started = time.perf_counter()
            process, base, cold = timing.cold_start(url, start_timeout=3600)
            servers[size] = (process, base)
            figures[size].p95.update(cold)
            warmed_up(base, deadline=time.monotonic() + 3600)
            figures[size].p95["warm-up done after start"] = (time.perf_counter() - started) * 1000
        bases = {size: base for size, (_, base) in servers.items()}
        for name, by_size in time_endpoints(bases, chosen, args.requests):
            for size, taken in by_size.items():
                figures[size].p95[name] = p95(taken)
            shown = ", ".join(f"{size:,} {p95(taken):.1f}" for size, taken in by_size.items())
            print(f"{kind}: {name}: p95 ms {shown}", flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    if not args.restart:
        return figures
    # A restart carries forward the count and the totals the first server saved.
    for size, url in urls.items():
        process, base, cold = timing.cold_start(url, start_timeout=3600)
        process.terminate()
        process.wait(timeout=30)
        for name, ms in cold.items():
            figures[size].p95[name.replace("start", "restart")] = ms
    return figures


def time_endpoints(
    bases: dict[int, str], chosen: list[str], requests: int
) -> Iterator[tuple[str, dict[int, list[float]]]]:
    """Each endpoint of ``bench/web.py`` (those ``chosen``, or all): milliseconds of
    ``requests`` rounds of one request to each size's server in turn."""
    import httpx

    paths = {size: web.endpoints(size, random.Random(7)) for size in bases}
    clients = {size: httpx.Client(base_url=base, timeout=600) for size, base in bases.items()}
    try:
        for name in paths[min(bases)]:
            if chosen and not any(part in name for part in chosen):
                continue
            chosen_paths = {size: paths[size][name] for size in clients}
            yield name, timing.in_turns(clients, chosen_paths, requests)
    finally:
        for client in clients.values():
            client.close()


def measure_pruning(kind: str, url: str, figures: Figures, args: argparse.Namespace) -> None:
    """Bytes per run, then (unless --no-prune) the prune's time and the bytes after it."""
    measure_bytes = pg_bytes if kind == "postgres" else sqlite_bytes
    figures.bytes_before = measure_bytes(url)[0]
    if args.prune:
        figures.prune_seconds, figures.pruned = prune_store(url, args.finished_before, args.batch)
        figures.bytes_after = measure_bytes(url)[0]


def report_latency(kind: str, sizes: list[int], found: dict[int, Figures]) -> None:
    """Each figure at every size, and the ratio of the largest size to the smallest (the
    target's); with three sizes or more, also to the one before the largest."""
    small, large = sizes[0], sizes[-1]
    middle = sizes[-2] if len(sizes) > 2 else None
    print(
        f"\n{kind}: p95 in ms at {', '.join(f'{size:,}' for size in sizes)} runs; "
        f"target: {large:,} within 1.25x of {small:,}"
    )
    header = "".join(f"{size:>14,}" for size in sizes) + f"{'ratio':>8}"
    if middle is not None:
        header += f"{f'to {middle:,}':>14}"
    print(f"{'operation':<34}{header}")
    for name in found[small].p95:
        values = [found[size].p95.get(name, float("nan")) for size in sizes]
        line = f"{name:<34}" + "".join(f"{value:>14.1f}" for value in values)
        line += f"{values[-1] / values[0]:>8.2f}"
        if middle is not None:
            line += f"{values[-1] / values[-2]:>14.2f}"
        if not values[-1] <= 1.25 * values[0]:
            line += "  (over 1.25)"
        print(line, flush=True)


def report_bytes(kind: str, size: int, figures: Figures) -> None:
    line = f"{kind} {size:,}: {figures.bytes_before:,.0f} bytes per run"
    if figures.pruned:
        line += (
            f", {figures.bytes_after:,.0f} after `ferryman prune --finished-before "
            f"{DAYS // 2}d` ({figures.prune_seconds:.1f} s: {figures.pruned})"
        )
    print(line, flush=True)


def main() -> None:
    global PREFIX
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,10000000")
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50, help="per endpoint")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument(
        "--name", default="ferryman_bench_scale", help="databases are named <name>_<size>"
    )
    parser.add_argument("--seed-only", action="store_true", help="seed the stores, measure nothing")
    parser.add_argument("--no-prune", dest="prune", action="store_false")
    parser.add_argument(
        "--no-restart", dest="restart", action="store_false", help="start each server once"
    )
    parser.add_argument(
        "--endpoints",
        default="",
        help="time only the endpoints whose name holds one of these comma-separated words "
        "(and no submits or claims)",
    )
    parser.add_argument("--finished-before", default=f"{DAYS // 2}d")
    parser.add_argument("--batch", type=int, default=500, help="runs per prune transaction")
    parser.add_argument("--pg", default=os.environ.get("FERRYMAN_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    PREFIX = args.name
    for kind in args.stores.split(","):
        urls: dict[int, str] = {}
        for size in sizes:
            urls[size] = (
                seed_sqlite(size, args.reseed)
                if kind == "sqlite"
                else seed_postgres(args.pg, size, args.reseed)
            )
        if args.seed_only:
            continue
        found = measure_stores(kind, urls, args)
        report_latency(kind, sizes, found)
        # Last: pruning changes the seeded stores (the next run seeds them again).
        for size in sizes:
            measure_pruning(kind, urls[size], found[size], args)
            report_bytes(kind, size, found[size])


if __name__ == "__main__":
    main()
