"""Dashboard and API latency with 1,000,000 runs and 100,000 evaluations in the store.

Seeds a store on each backend (PostgreSQL: a scratch database
``ferryman_bench_web`` on 127.0.0.1:5432, filled with ``COPY``; SQLite: a file
under the system's temporary folder), starts the real server (``ferryman
serve``) on a loopback port, and times requests with httpx from this process:
the overview (page and API), the runs list filtered by job and status, a
page deep in it, by an hour's window a day and six days back and by
everything until six days back, a run page (page and API), the sensors,
a sensor page, the workers, the dead letters and ``/metrics``; runs found by
run_key (exact and prefix) and by error group, the timeline over the last
hour and 24 hours (all jobs and one), a job's page with its duration
chart over 24 hours and 7 days, the overview with its queue charts over 24
hours and 7 days, and a sensor's page over 7 days. Prints p50 /
p95 / max per endpoint; the target is p95 < 200 ms. The overview serves the
latest count of runs by job and status and recounts it in the background
every few seconds (``ferryman/web/run_counts.py``); the server takes the first
count and folds the processing log on a thread of its own as it starts
(``ferryman.web.serving.warm_up``), answering meanwhile: the time until it
answers is printed, and the first overview and the first ``/metrics`` after
it are timed on their own.

The seeded stores are kept between runs; ``--reseed`` builds them again;
``--forget-counts`` deletes the counts a server saved, so the server starts
as on a store that never had one (its first overview then answers before
the count is done and says it is counting).
Runs are spread over the last week, newest ids last, 90 % succeeded, 4 %
failed, 2 % dead, the rest queued or running, over ten jobs; one run in ten
has a processing log of three events, and failed and dead runs carry a
traceback.

    .venv/bin/python bench/web.py [--runs 1000000] [--evaluations 100000] [--stores sqlite,postgres]
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
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import timing  # noqa: E402  (after the path set-up above)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "ferryman_bench_web"  # --name: also the SQLite file's folder under the temp dir
JOBS = [f"job-{n}" for n in range(10)]
SENSORS = [f"sensor-{n}" for n in range(5)]
DAY = 24 * 3600.0
WEEK = 7 * DAY
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "pipeline.py", line 42, in load\n'
    "    rows = parse(document)\n"
    "ValueError: record {n}: amount is not a number"
)

RUN_COLUMNS = (
    "id, job, run_key, payload, status, attempt, max_attempts, available_at, lease_owner, "
    "lease_token, lease_expires_at, last_error, created_at, updated_at, started_at, finished_at, "
    "key_digest"
)
EVENT_COLUMNS = "run_id, kind, at, attempt, worker_id, lease_token, detail"
WORKER_COLUMNS = "id, host, pid, jobs, started_at, last_seen_at, stopped_at"
EVALUATION_COLUMNS = (
    "sensor, idempotency_key, outcome, cursor_before, cursor_after, state_version_before, "
    "state_version_after, runs_requested, runs_deduplicated, items_skipped, run_ids, error, "
    "evaluator, started_at, finished_at"
)


def status_of(n: int) -> str:
    bucket = n % 100
    if bucket < 90:
        return "succeeded"
    if bucket < 94:
        return "failed"
    if bucket < 96:
        return "dead"
    return "queued" if bucket < 99 else "running"


def run_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    from ferryman.store.keys import run_key_digest

    for n in range(1, count + 1):
        created = now - WEEK + WEEK * n / count
        status = status_of(n)
        finished = (
            created + 0.05 + (n % 7) * 0.01 if status in ("succeeded", "failed", "dead") else None
        )
        running = status == "running"
        yield (
            n,
            JOBS[n % len(JOBS)],
            f"key-{n}",
            json.dumps({"n": n, "path": f"/data/in/{n}.xml"}),
            status,
            1 if status != "queued" else 0,
            5,
            created,
            "bench-worker-6" if running else None,  # held by the worker alive now
            1 if status != "queued" else 0,
            now + 3600 if running else None,
            TRACEBACK.format(n=n) if status in ("failed", "dead") else None,
            created,
            finished or created,
            created + 0.01 if status != "queued" else None,
            finished,
            run_key_digest(JOBS[n % len(JOBS)], f"key-{n}"),
        )


def worker_of(at: float, now: float) -> str:
    """The worker that ran what was claimed at ``at``: one a day, the last still alive."""
    return f"bench-worker-{min(6, int((at - (now - WEEK)) // DAY))}"


def worker_rows(now: float) -> list[tuple[object, ...]]:
    jobs = json.dumps(JOBS)
    rows: list[tuple[object, ...]] = []
    for day in range(7):
        started = now - WEEK + day * DAY
        stopped = started + DAY if day < 6 else None
        seen = stopped if stopped is not None else now
        rows.append((f"bench-worker-{day}", "bench", 1000 + day, jobs, started, seen, stopped))
    return rows


def event_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    for n in range(10, count + 1, 10):
        created = now - WEEK + WEEK * n / count
        worker = worker_of(created, now)
        yield (n, "requested", created, 0, None, None, None)
        yield (n, "claimed", created + 0.01, 1, worker, 1, None)
        status = status_of(n)
        if status in ("succeeded", "failed", "dead"):
            yield (n, status, created + 0.05, 1, worker, 1, None)


def evaluation_rows(count: int, now: float) -> Iterator[tuple[object, ...]]:
    for n in range(1, count + 1):
        at = now - WEEK + WEEK * n / count
        sensor = SENSORS[n % len(SENSORS)]
        version = n // len(SENSORS)
        failed = n % 50 == 0
        yield (
            sensor,
            None,
            "failed" if failed else "ok",
            json.dumps({"v": 1, "value": str(version)}),
            None if failed else json.dumps({"v": 1, "value": str(version + 1)}),
            version,
            None if failed else version + 1,
            0 if failed else 1,
            0,
            0,
            "[]",
            "TimeoutError: listing took too long" if failed else None,
            "bench:1",
            at,
            at + 0.02,
        )


def sensor_rows(now: float, evaluations: int) -> list[tuple[object, ...]]:
    per_sensor = evaluations // len(SENSORS)
    return [
        (
            name,
            "poll",
            json.dumps({"v": 1, "value": str(per_sensor)}),
            per_sensor,
            "running",
            0,
            now + 30,
            now,
            now,
        )
        for name in SENSORS
    ]


SENSOR_COLUMNS = (
    "name, kind, cursor, state_version, status, consecutive_failures, next_evaluation_at, "
    "last_evaluation_at, updated_at"
)


# -- seeding -------------------------------------------------------------------


def pg_url(admin: str, database: str) -> str:
    base = admin.rsplit("/", 1)[0]
    return f"{base}/{database}"


def seed_postgres(admin: str, name: str, runs: int, evaluations: int, reseed: bool) -> str:
    from ferryman.store import upgrade

    url = pg_url(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not reseed:
            print(f"postgres: reusing database {name} (--reseed to rebuild)", flush=True)
            return url.replace("postgresql://", "postgresql+psycopg://")
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    sa_url = url.replace("postgresql://", "postgresql+psycopg://")
    upgrade(sa_url)
    started = time.perf_counter()
    now = time.time()
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        for table, columns, rows in (
            ("ferryman_runs", RUN_COLUMNS, run_rows(runs, now)),
            ("ferryman_run_events", EVENT_COLUMNS, event_rows(runs, now)),
            ("ferryman_workers", WORKER_COLUMNS, iter(worker_rows(now))),
            ("ferryman_sensors", SENSOR_COLUMNS, iter(sensor_rows(now, evaluations))),
            ("ferryman_sensor_evaluations", EVALUATION_COLUMNS, evaluation_rows(evaluations, now)),
        ):
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        cursor.execute("SELECT setval('ferryman_runs_id_seq', %s)", (runs,))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"postgres: seeded in {time.perf_counter() - started:.0f} s", flush=True)
    return sa_url


def seed_sqlite(name: str, runs: int, evaluations: int, reseed: bool) -> str:
    path = Path(tempfile.gettempdir()) / name / "store.db"
    from ferryman.store import upgrade

    url = f"sqlite:///{path}"
    if path.exists() and not reseed:
        print(f"sqlite: reusing {path} (--reseed to rebuild)", flush=True)
        return url
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob("store.db*"):
        leftover.unlink()
    upgrade(url)
    started = time.perf_counter()
    now = time.time()
    fill_sqlite(
        path,
        [
            ("ferryman_runs", RUN_COLUMNS, run_rows(runs, now)),
            ("ferryman_run_events", EVENT_COLUMNS, event_rows(runs, now)),
            ("ferryman_workers", WORKER_COLUMNS, iter(worker_rows(now))),
            ("ferryman_sensors", SENSOR_COLUMNS, iter(sensor_rows(now, evaluations))),
            ("ferryman_sensor_evaluations", EVALUATION_COLUMNS, evaluation_rows(evaluations, now)),
        ],
    )
    print(f"sqlite: seeded in {time.perf_counter() - started:.0f} s", flush=True)
    return url


def fill_sqlite(path: Path, tables: list[tuple[str, str, Iterator[tuple[object, ...]]]]) -> None:
    """Insert each (table, columns, rows) with executemany, then ANALYZE."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")  # seeding only: the bench reads afterwards
    for table, columns, rows in tables:
        marks = ", ".join("?" for _ in columns.split(","))
        with conn:
            conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
    conn.execute("ANALYZE")
    conn.close()


def forget_counts(url: str) -> None:
    """Delete the saved counts (``ferryman_read_snapshots``): the next server starts as on a
    store that never saved one, counting every run (its first overview says it is counting)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM ferryman_read_snapshots"))
    finally:
        engine.dispose()


# -- measuring -----------------------------------------------------------------


def hour_ago(hours: int) -> str:
    """An ISO 8601 time ``hours`` before now, in UTC, to the minute."""
    moment = datetime.now(UTC) - timedelta(hours=hours)
    return moment.strftime("%Y-%m-%dT%H:%M")


def endpoints(runs: int, rng: random.Random) -> dict[str, list[str]]:
    logged = [n for n in (rng.randrange(10, runs, 10) for _ in range(50))]
    middle = runs // 2
    step = max(1, min(997, middle // 20))  # twenty pages, all inside the table
    return {
        "overview page /": ["/"],
        "overview, queue over 24 h": ["/?range=24h"],
        "overview, queue over 7 d": ["/?range=7d"],
        "overview API /api/summary": ["/api/summary"],
        "runs page, job + status": [f"/runs?job={rng.choice(JOBS)}&status=dead" for _ in range(20)],
        "runs API, job + status": [
            f"/api/runs?job={rng.choice(JOBS)}&status=failed&limit=50" for _ in range(20)
        ],
        "runs API, deep page": [
            f"/api/runs?status=succeeded&before_id={middle - i * step}" for i in range(20)
        ],
        "runs page, deep page": [f"/runs?before_id={middle - i * step}" for i in range(20)],
        "runs page, one hour a day ago": [
            f"/runs?since={hour_ago(25 + i)}&until={hour_ago(24 + i)}" for i in range(20)
        ],
        "runs page, one hour 6 days ago": [
            f"/runs?since={hour_ago(145 + i)}&until={hour_ago(144 + i)}" for i in range(20)
        ],
        "runs page, until 6 days ago": [f"/runs?until={hour_ago(144 + i)}" for i in range(20)],
        "runs API, job + one hour": [
            f"/api/runs?job={rng.choice(JOBS)}&since={hour_ago(30 + i)}&until={hour_ago(29 + i)}"
            for i in range(20)
        ],
        "run page /runs/{id}": [f"/runs/{n}" for n in logged],
        "run API /api/runs/{id}": [f"/api/runs/{n}" for n in logged],
        "runs page, run_key exact": [f"/runs?run_key=key-{n}" for n in logged],
        "runs page, run_key prefix": [f"/runs?run_key=key-{n}&match=prefix" for n in logged],
        "runs, a stopped worker": [f"/runs?worker=bench-worker-{n}" for n in range(6)],
        "runs, the alive worker": ["/runs?worker=bench-worker-6"],
        "runs, an unknown worker": ["/runs?worker=no-such-worker"],
        "runs page, error group": [
            f"/runs?job={job}&error=ValueError:+record+N:+amount+is+not+a+number" for job in JOBS
        ],
        "timeline, last hour": ["/timeline"],
        "timeline, 24 h": ["/timeline?range=24h"],
        "timeline, 24 h, one job": [f"/timeline?range=24h&job={job}" for job in JOBS],
        "job page, 24 h durations": [f"/jobs/{job}" for job in JOBS],
        "job page, 7 d durations": [f"/jobs/{job}?range=7d" for job in JOBS],
        "sensors page": ["/sensors"],
        "sensor page": [f"/sensors/{name}" for name in SENSORS],
        "sensor page, 7 d": [f"/sensors/{name}?range=7d" for name in SENSORS],
        "workers page": ["/workers"],
        "dead letters page": ["/dead-letters"],
        "/metrics": ["/metrics"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--evaluations", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--requests", type=int, default=100, help="per endpoint")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument(
        "--forget-counts",
        action="store_true",
        help="delete the saved counts first: the server starts as on a store that never saved one",
    )
    parser.add_argument(
        "--name", default=DATABASE, help="PostgreSQL database and SQLite folder to seed and reuse"
    )
    parser.add_argument("--pg", default=os.environ.get("FERRYMAN_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))

    rows: list[str] = []
    for kind in args.stores.split(","):
        url = (
            seed_sqlite(args.name, args.runs, args.evaluations, args.reseed)
            if kind == "sqlite"
            else seed_postgres(args.pg, args.name, args.runs, args.evaluations, args.reseed)
        )
        # The server counts the runs and folds the processing log as it starts,
        # on a thread of its own (ferryman.web.serving.warm_up): the time until
        # it answers is timed here, and the first requests after it on their own.
        if args.forget_counts:
            forget_counts(url)
        process, base, cold = timing.cold_start(url)
        for name, ms in cold.items():
            print(f"{kind}: {name} {ms:,.0f} ms", flush=True)
        try:
            for name, paths in endpoints(args.runs, random.Random(7)).items():
                timings = timing.measure(base, paths, args.requests)
                p50, p95 = statistics.median(timings), timing.percentile(timings, 0.95)
                flag = "" if p95 < 200 else "  (over 200 ms)"
                line = f"{kind:<9}{name:<30}{p50:>9.1f}{p95:>9.1f}{max(timings):>9.1f}{flag}"
                print(line, flush=True)
                rows.append(line)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"\n{args.runs:,} runs, {args.evaluations:,} evaluations; milliseconds per request")
    print(f"{'store':<9}{'endpoint':<30}{'p50':>9}{'p95':>9}{'max':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
