"""Sensor evaluation cost: ferryman's built-in sensors, and a Dagster sensor for comparison.

Scenarios, each in a subprocess of its own so that memory figures are its own:

* **folder**: a directory of ``--files`` files (default 10,000 and 100,000).
  The first evaluation decides them all; then ``--new`` files (default 100)
  arrive and the next evaluation — the steady state — is timed. Another
  ``--new`` files arrive and one more evaluation runs under ``tracemalloc``
  for its peak Python allocation. ferryman's ``fm.sensors.folder`` is
  measured next to the folder sensor from Dagster's documentation (``os.listdir`` +
  ``os.stat`` per file, mtime cursor), evaluated in-process with
  ``dagster.build_sensor_context`` from ``.venv-bench`` (created with
  ``pip install dagster`` when missing). The Dagster sensor is not
  equivalent: its float-mtime cursor loses files moved in with an old mtime
  and files sharing the cursor's mtime, which is what ferryman's edge is for.
* **s3**: a prefix of ``--s3-keys`` objects (default 10,000) on a moto server
  started on a loopback port; same protocol (ListObjectsV2, 1,000 keys a page).
* **ticks**: ``app.tick()`` per second for one no-op poll sensor, on a SQLite
  file and on a fresh PostgreSQL database: each tick is one evaluation
  committed by the engine's rules (runs + evaluation row + cursor CAS).

Usage: ``.venv/bin/python bench/sensors.py`` (``--help`` for the options).
The table goes to stdout; ``--json FILE`` keeps the raw figures.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module (which concurrent.futures uses).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import contextlib
import json
import resource
import shutil
import socket
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_VENV = ROOT / ".venv-bench"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULT_PREFIX = "RESULT "


# -- measurements (run inside worker subprocesses) ------------------------------------


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def create_files(folder: Path, names: list[str]) -> None:
    for name in names:
        os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o644))


def bare_scan(folder: Path) -> int:
    """One stat per directory entry: the floor under any folder sensor's cost."""
    with os.scandir(folder) as entries:
        return sum(1 for entry in entries if entry.stat(follow_symlinks=False).st_size >= 0)


def three_evaluations(
    evaluate: Callable[[], tuple[int, int]],
    arrive: Callable[[str], None],
    baseline: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """First evaluation, a timed steady-state one, then one under tracemalloc.

    ``evaluate`` returns (runs requested, cursor bytes); ``arrive(tag)`` adds
    the new items; ``baseline`` is the bare listing the sensor cannot avoid
    (``os.scandir`` + ``stat``, or ListObjectsV2), timed just before the
    steady-state evaluation.
    """
    started = time.perf_counter()
    first_count, _ = evaluate()
    first = time.perf_counter() - started
    arrive("a")
    listing = None
    if baseline is not None:
        started = time.perf_counter()
        baseline()
        listing = time.perf_counter() - started
    started = time.perf_counter()
    found, cursor_bytes = evaluate()
    steady = time.perf_counter() - started
    arrive("b")
    tracemalloc.start()
    found_again, _ = evaluate()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "first_s": first,
        "first_found": first_count,
        "listing_s": listing,
        "steady_s": steady,
        "found": found,
        "found_again": found_again,
        "peak_kib": peak / 1024,
        "max_rss_mib": max_rss_mib(),
        "cursor_bytes": cursor_bytes,
    }


def worker_folder_ferryman(files: int, new: int) -> dict[str, Any]:
    import ferryman as fm
    from ferryman.sensors.context import SensorContext

    folder = Path(tempfile.mkdtemp(prefix="bench-folder-"))
    try:
        create_files(folder, [f"f{i:07d}.csv" for i in range(files)])
        sensor = fm.sensors.folder(folder, "*.csv", stable_for=0, max_per_evaluation=files + 1)
        ctx = SensorContext(sensor="bench", evaluation_started_at=datetime.now(UTC))
        cursor: list[str | None] = [None]

        def evaluate() -> tuple[int, int]:
            result = sensor(ctx, cursor[0])
            cursor[0] = result.cursor or cursor[0]
            return len(result.run_requests), len(cursor[0] or "")

        return three_evaluations(
            evaluate,
            lambda tag: create_files(folder, [f"{tag}{i:05d}.csv" for i in range(new)]),
            lambda: bare_scan(folder),
        )
    finally:
        shutil.rmtree(folder)


def worker_folder_dagster(files: int, new: int) -> dict[str, Any]:
    import dagster as dg  # type: ignore[import-not-found,unused-ignore]

    folder = Path(tempfile.mkdtemp(prefix="bench-folder-"))  # removed in the finally below
    try:
        return _dagster_scan(dg, folder, files, new)
    finally:
        shutil.rmtree(folder)


def _dagster_scan(dg: Any, folder: Path, files: int, new: int) -> dict[str, Any]:
    @dg.op  # type: ignore[untyped-decorator,unused-ignore]
    def noop() -> None: ...

    @dg.job  # type: ignore[untyped-decorator,unused-ignore]
    def load() -> None:
        noop()

    # The directory sensor from Dagster's documentation ("sensors" concept page).
    @dg.sensor(job=load)  # type: ignore[untyped-decorator,unused-ignore]
    def directory_sensor(context: Any) -> Iterator[Any]:  # Dagster reads these hints
        last_mtime = float(context.cursor) if context.cursor else 0.0
        max_mtime = last_mtime
        for filename in os.listdir(folder):
            filepath = os.path.join(folder, filename)
            if os.path.isfile(filepath):
                file_mtime = os.stat(filepath).st_mtime
                if file_mtime <= last_mtime:
                    continue
                yield dg.RunRequest(run_key=f"{filename}:{file_mtime}", run_config={})
                max_mtime = max(max_mtime, file_mtime)
        context.update_cursor(str(max_mtime))

    create_files(folder, [f"f{i:07d}.csv" for i in range(files)])
    cursor: list[str | None] = [None]

    def evaluate() -> tuple[int, int]:
        data = directory_sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor[0]))
        cursor[0] = data.cursor or cursor[0]
        return len(data.run_requests or []), len(cursor[0] or "")

    def arrive(tag: str) -> None:
        # Dagster's cursor is the newest mtime as a float: a file with the
        # same mtime as the cursor would be skipped. Make sure the new files
        # are newer, which the real world does not guarantee.
        create_files(folder, [f"{tag}{i:05d}.csv" for i in range(new)])
        future = time.time() + (60 if tag == "a" else 120)
        for i in range(new):
            os.utime(folder / f"{tag}{i:05d}.csv", (future, future))

    return three_evaluations(evaluate, arrive, lambda: bare_scan(folder))


def worker_s3_ferryman(keys: int, new: int, endpoint: str) -> dict[str, Any]:
    import boto3  # type: ignore[import-untyped,unused-ignore]

    import ferryman as fm
    from ferryman.sensors.context import SensorContext

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)

    def put(names: list[str]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), names))

    put([f"in/{i:07d}.json" for i in range(keys)])
    sensor = fm.sensors.s3_prefix(bucket, "in/", client=client, max_per_evaluation=keys + 1)
    ctx = SensorContext(sensor="bench", evaluation_started_at=datetime.now(UTC))
    cursor: list[str | None] = [None]

    def evaluate() -> tuple[int, int]:
        result = sensor(ctx, cursor[0])
        cursor[0] = result.cursor or cursor[0]
        return len(result.run_requests), len(cursor[0] or "")

    def listing() -> int:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="in/", PaginationConfig={"PageSize": 1000}
        )
        return sum(len(page.get("Contents", ())) for page in pages)

    return three_evaluations(
        evaluate, lambda tag: put([f"in/{tag}{i:05d}" for i in range(new)]), listing
    )


def worker_ticks(store_url: str, seconds: float) -> dict[str, Any]:
    import ferryman as fm

    app = fm.App(store_url, create=True)

    @app.job
    def load(ctx: fm.JobContext, payload: Any) -> None: ...

    counter = [0]

    @app.poll_sensor(job="load", interval=0, name="noop")
    def noop(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        counter[0] += 1
        return fm.SensorResult(cursor=str(counter[0]))

    app.tick(force=True)  # registers the sensor, warms the pool
    ticks = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        ticks += len(app.tick(force=True))
    elapsed = time.perf_counter() - started
    app.close()
    return {"ticks": ticks, "ticks_per_s": ticks / elapsed, "max_rss_mib": max_rss_mib()}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "folder_ferryman": worker_folder_ferryman,
    "folder_dagster": worker_folder_dagster,
    "s3_ferryman": worker_s3_ferryman,
    "ticks": worker_ticks,
}


# -- orchestration ---------------------------------------------------------------------


def run_worker(python: Path | str, name: str, **arguments: Any) -> dict[str, Any]:
    command = [str(python), str(Path(__file__).resolve()), "--worker", name, json.dumps(arguments)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail) or f"exit {completed.returncode}"}


def ensure_bench_venv() -> bool:
    if BENCH_PYTHON.exists():
        probe = subprocess.run([str(BENCH_PYTHON), "-c", "import dagster"], capture_output=True)
        if probe.returncode == 0:
            return True
    print("installing dagster into .venv-bench ...", file=sys.stderr)
    if not BENCH_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    install = subprocess.run([str(BENCH_PYTHON), "-m", "pip", "install", "--quiet", "dagster"])
    return install.returncode == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server(python: Path | str) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the moto server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    import psycopg
    import sqlalchemy as sa

    name = f"ferryman_bench_sensors_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--s3-keys", type=int, default=10_000)
    parser.add_argument("--tick-seconds", type=float, default=5.0)
    parser.add_argument("--pg", default=os.environ.get("FERRYMAN_BENCH_PG", DEFAULT_PG))
    parser.add_argument("--skip-dagster", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("arguments", nargs="?", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        result = WORKERS[options.worker](**json.loads(options.arguments))
        print(RESULT_PREFIX + json.dumps(result))
        return

    python = MAIN_PYTHON if MAIN_PYTHON.exists() else Path(sys.executable)
    dagster = not options.skip_dagster and ensure_bench_venv()
    scans: list[dict[str, Any]] = []
    for files in options.files:
        systems = [("ferryman", python, "folder_ferryman")]
        if dagster:
            systems.append(("dagster", BENCH_PYTHON, "folder_dagster"))
        for system, interpreter, worker in systems:
            result = run_worker(interpreter, worker, files=files, new=options.new)
            scans.append({"scenario": "folder", "system": system, "items": files, **result})
    if options.s3_keys:
        with moto_server(python) as endpoint:
            result = run_worker(
                python, "s3_ferryman", keys=options.s3_keys, new=options.new, endpoint=endpoint
            )
        scans.append({"scenario": "s3 (moto)", "system": "ferryman", "items": options.s3_keys})
        scans[-1].update(result)

    ticks: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        sqlite_url = f"sqlite:///{folder}/bench.db"
        ticks.append(
            {
                "store": "sqlite",
                **run_worker(python, "ticks", store_url=sqlite_url, seconds=options.tick_seconds),
            }
        )
    try:
        with postgres_database(options.pg) as pg_url:
            ticks.append(
                {
                    "store": "postgresql",
                    **run_worker(python, "ticks", store_url=pg_url, seconds=options.tick_seconds),
                }
            )
    except Exception as exc:  # the PostgreSQL row is reported as missing, not fatal
        ticks.append({"store": "postgresql", "error": str(exc)})

    print(
        f"\nSensor evaluation, {options.new} new items per evaluation "
        f"(load average {os.getloadavg()[0]:.1f})\n"
    )
    headers = [
        "scenario",
        "system",
        "items",
        "first eval s",
        "bare listing s",
        "steady eval s",
        "found",
        "peak KiB",
        "max RSS MiB",
        "cursor B",
    ]
    rows = []
    for scan in scans:
        if "error" in scan:
            rows.append(
                [
                    scan["scenario"],
                    scan["system"],
                    str(scan["items"]),
                    "error: " + scan["error"][:60],
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                scan["scenario"],
                scan["system"],
                f"{scan['items']:,}",
                cell(scan["first_s"]),
                cell(scan["listing_s"]),
                cell(scan["steady_s"]),
                f"{scan['found']}/{scan['found_again']}",
                cell(scan["peak_kib"], 0),
                cell(scan["max_rss_mib"], 0),
                str(scan["cursor_bytes"]),
            ]
        )
    print_table(headers, rows)
    print("\nNo-op poll sensor through app.tick() (one evaluation committed per tick)\n")
    print_table(
        ["store", "ticks/s", "max RSS MiB"],
        [
            [
                t["store"],
                cell(t.get("ticks_per_s"), 1) if "error" not in t else t["error"][:60],
                cell(t.get("max_rss_mib"), 0),
            ]
            for t in ticks
        ],
    )
    if options.json:
        options.json.write_text(json.dumps({"scans": scans, "ticks": ticks}, indent=2))


if __name__ == "__main__":
    main()
