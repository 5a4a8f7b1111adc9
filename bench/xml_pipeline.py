"""XML reference pipeline: apps/s with ferryman next to a bare loop, in one run.

For each store (a SQLite file and a PostgreSQL database, each fresh) the same
``--apps`` generated applications (default 20,000, 5 % broken) are staged and
loaded four ways:

* **bare loop, 1 process**: for each application, read its XML, parse +
  validate + map it with the example's own ``map_application``, insert the
  rows, commit: one transaction per application and no ferryman at all. A
  broken application writes nothing (cheaper than a ferryman rejection).
* **bare loop, 2 processes**: the same, the ids split by parity.
* **ferryman, 1 process** and **ferryman, 2 processes**: the example's
  ``load_application`` job through ``app.work(until_idle=True,
  concurrency=--concurrency, prefetch=--prefetch, processes=N)`` (4 job
  threads and 64 runs claimed ahead per process by default); the sensor's tick that
  requested the runs is not timed, everything from the first claim to the
  last durable outcome is, and the exactly-once checks of
  ``examples/xml_to_tables/verify.py`` must pass afterwards.

The bare loop uses the store's own engine (on SQLite: WAL,
``synchronous=FULL``), so both commit with the same durability. Each
measurement starts from freshly created tables. Targets: ferryman with one
process at ≥ 85 % of the bare loop; ferryman with two processes at ≥ 1.6x
its own one-process rate on this two-core machine.

    .venv/bin/python bench/xml_pipeline.py [--apps 20000] [--stores sqlite,postgres]
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples.xml_to_tables import pipeline  # noqa: E402
from examples.xml_to_tables.generator import GeneratedApplication, generate  # noqa: E402
from examples.xml_to_tables.mapping import InvalidApplication, map_application  # noqa: E402
from examples.xml_to_tables.schema import app_xml, metadata  # noqa: E402
from examples.xml_to_tables.verify import verify  # noqa: E402

import ferryman as fm  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SEED = 20261123


@contextmanager
def fresh_store(kind: str, pg_admin: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ferryman-xml-bench-") as folder:
            yield f"sqlite:///{folder}/store.db"
        return
    name = f"ferryman_xml_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_admin).set(database=name, drivername="postgresql+psycopg")
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(pg_admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(store_url: str, apps: list[GeneratedApplication]) -> fm.App:
    """A migrated store with the example's tables and every application staged."""
    app = fm.App(store_url, create=True)
    metadata.create_all(app.engine)
    with app.engine.begin() as conn:
        conn.execute(app_xml.insert(), [{"app_id": a.app_id, "xml": a.xml} for a in apps])
    if app.engine.dialect.name == "postgresql":
        # The staging table only. Analysed while empty, the target tables would
        # keep statistics of zero rows, and each connection's cached plans for
        # the foreign-key checks would then scan them whole on every insert:
        # both loops would slow down quadratically, measuring that accident.
        with app.engine.begin() as conn:
            conn.exec_driver_sql(f"ANALYZE {app_xml.name}")
    return app


def bare_loop(store_url: str, app_ids: list[int]) -> None:
    """Read, map, insert, commit: one transaction per application, nothing else."""
    app = fm.App(store_url)
    engine = app.engine
    try:
        for app_id in app_ids:
            with app.store.read("bare loop read") as conn:
                document = conn.scalar(sa.select(app_xml.c.xml).where(app_xml.c.app_id == app_id))
            try:
                rows = map_application(app_id, document)
            except InvalidApplication:
                continue
            with engine.begin() as conn:
                pipeline.write_rows(conn, rows)
    finally:
        app.close()


def timed_bare(store_url: str, app_ids: list[int], processes: int) -> float:
    started = time.perf_counter()
    if processes == 1:
        bare_loop(store_url, app_ids)
    else:
        children = []
        for index in range(processes):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    bare_loop(store_url, app_ids[index::processes])
                except BaseException:
                    code = 1
                os._exit(code)
            children.append(pid)
        for pid in children:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "a bare-loop process failed"
    return time.perf_counter() - started


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine have spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Measurement:
    rate: float  # applications per second
    machine_cpu_ms: float  # busy CPU of the whole machine (database server included) per app


def measure(
    kind: str,
    pg_admin: str,
    apps: list[GeneratedApplication],
    what: str,
    processes: int,
    concurrency: int,
    prefetch: int,
) -> Measurement:
    app_ids = [a.app_id for a in apps]
    with fresh_store(kind, pg_admin) as url:
        app = prepare(url, apps)
        try:
            busy = machine_busy_seconds()
            if what == "bare":
                elapsed = timed_bare(url, app_ids, processes)
                busy = machine_busy_seconds() - busy
            else:
                # The sensor lives on the example's App; tick through it on this store.
                pipeline.app.close()
                pipeline.staged_applications.close()  # its engine is on the previous store
                pipeline.app.use_store(url)
                # One evaluation requests at most 10,000 runs: tick until it finds none.
                while any(e.runs_requested for e in pipeline.app.tick(force=True)):
                    pass
                sensor_busy = machine_busy_seconds() - busy
                started = time.perf_counter()
                report = pipeline.app.work(
                    until_idle=True,
                    concurrency=concurrency,
                    prefetch=prefetch,
                    processes=None if processes == 1 else processes,
                    handle_signals=False,
                )
                elapsed = time.perf_counter() - started
                busy = machine_busy_seconds() - busy - sensor_busy
                assert not report.errors, report.errors
                problems = {name: n for name, n in verify(app.engine).items() if n}
                assert not problems, problems
            good = sum(1 for a in apps if a.defect is None)
            with app.store.read("counting loaded apps") as conn:
                loaded = conn.scalar(sa.text("SELECT count(*) FROM app_base"))
            assert loaded == good, (loaded, good)
        finally:
            app.close()
            pipeline.app.close()
    return Measurement(rate=len(apps) / elapsed, machine_cpu_ms=busy * 1000 / len(apps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=20_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=64,
        help="runs a ferryman worker process claims ahead of its job threads (default 64)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="job threads per ferryman worker process (default 4)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="times every configuration is measured; medians are reported (default 3)",
    )
    parser.add_argument("--pg", default=os.environ.get("FERRYMAN_BENCH_PG", DEFAULT_PG))
    args = parser.parse_args()

    print(f"generating {args.apps:,} applications ...", flush=True)
    apps = list(generate(SEED, args.apps, bad_share=0.05))
    started = time.perf_counter()
    for application in apps[:2000]:
        with suppress(InvalidApplication):
            map_application(application.app_id, application.xml)
    mapping_rate = min(2000, len(apps)) / (time.perf_counter() - started)
    print(f"parse + validate + map alone, no database: {mapping_rate:,.0f} apps/s\n")

    configurations = [("bare", 1), ("ferryman", 1), ("bare", 2), ("ferryman", 2)]
    label = {"bare": "bare loop", "ferryman": "ferryman"}
    summaries: list[str] = []
    table: list[str] = []
    for kind in args.stores.split(","):
        results: dict[tuple[str, int], list[Measurement]] = {c: [] for c in configurations}
        shares: list[float] = []
        scalings: list[float] = []
        for round_number in range(1, args.rounds + 1):
            # One round measures all four, one after the other, so that the
            # ratios compare runs made minutes apart, not a whole bench apart:
            # this machine's speed drifts by a third over an hour.
            found: dict[tuple[str, int], Measurement] = {}
            for what, processes in configurations:
                found[(what, processes)] = measure(
                    kind, args.pg, apps, what, processes, args.concurrency, args.prefetch
                )
                result = found[(what, processes)]
                results[(what, processes)].append(result)
                print(
                    f"round {round_number} {kind:<10} {label[what]:<10} {processes} process(es): "
                    f"{result.rate:7,.0f} apps/s, machine CPU {result.machine_cpu_ms:.2f} ms/app",
                    flush=True,
                )
            shares.append(found[("ferryman", 1)].rate / found[("bare", 1)].rate)
            scalings.append(found[("ferryman", 2)].rate / found[("ferryman", 1)].rate)
        for what, processes in configurations:
            rate = statistics.median(m.rate for m in results[(what, processes)])
            cpu = statistics.median(m.machine_cpu_ms for m in results[(what, processes)])
            # Two cores can do no more than 2 s of CPU work per second.
            ceiling = 2000 / cpu
            table.append(
                f"| {kind} | {label[what]} | {processes} | {rate:,.0f} | {cpu:.2f} | "
                f"{ceiling:,.0f} |"
            )
        summaries.append(
            f"{kind}: ferryman with 1 process = {statistics.median(shares):.0%} of the bare "
            f"loop (target ≥ 85%; rounds: {', '.join(f'{s:.0%}' for s in shares)}); "
            f"2 processes = {statistics.median(scalings):.2f}x its 1-process rate (target "
            f"≥ 1.6x; rounds: {', '.join(f'{s:.2f}x' for s in scalings)})"
        )
    print(
        f"\nmedians of {args.rounds} rounds, {args.apps:,} applications, "
        f"ferryman with {args.concurrency} job threads and prefetch {args.prefetch} per process:"
    )
    print("| store | system | processes | apps/s | machine CPU ms/app | 2-core ceiling apps/s |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(table))
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
