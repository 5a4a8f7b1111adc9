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
  concurrency=1, prefetch=--prefetch, processes=N)``; the sensor's tick that
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
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
        with app.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
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


def measure(
    kind: str,
    pg_admin: str,
    apps: list[GeneratedApplication],
    what: str,
    processes: int,
    prefetch: int,
) -> float:
    app_ids = [a.app_id for a in apps]
    with fresh_store(kind, pg_admin) as url:
        app = prepare(url, apps)
        try:
            if what == "bare":
                elapsed = timed_bare(url, app_ids, processes)
            else:
                # The sensor lives on the example's App; tick through it on this store.
                pipeline.app.close()
                pipeline.staged_applications.close()  # its engine is on the previous store
                pipeline.app.use_store(url)
                # One evaluation requests at most 10,000 runs: tick until it finds none.
                while any(e.runs_requested for e in pipeline.app.tick(force=True)):
                    pass
                started = time.perf_counter()
                report = pipeline.app.work(
                    until_idle=True,
                    concurrency=1,
                    prefetch=prefetch,
                    processes=None if processes == 1 else processes,
                    handle_signals=False,
                )
                elapsed = time.perf_counter() - started
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
    return len(apps) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=20_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=16,
        help="runs a ferryman worker claims ahead of its one job thread (default 16)",
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

    runs: list[tuple[str, str, int]] = [
        ("bare loop", "bare", 1),
        ("ferryman", "ferryman", 1),
        ("bare loop", "bare", 2),
        ("ferryman", "ferryman", 2),
    ]
    header = f"{'store':<10} {'system':<10} {'processes':>9} {'apps/s':>9}"
    rows: list[str] = []
    for kind in args.stores.split(","):
        rates: dict[tuple[str, int], float] = {}
        for label, what, processes in runs:
            rate = measure(kind, args.pg, apps, what, processes, args.prefetch)
            rates[(what, processes)] = rate
            line = f"{kind:<10} {label:<10} {processes:>9} {rate:>9,.0f}"
            print(line, flush=True)
            rows.append(line)
        share = rates[("ferryman", 1)] / rates[("bare", 1)]
        scaling = rates[("ferryman", 2)] / rates[("ferryman", 1)]
        summary = (
            f"{kind}: ferryman 1 process = {share:.0%} of the bare loop (target ≥ 85%); "
            f"2 processes = {scaling:.2f}x its 1-process rate (target ≥ 1.6x)"
        )
        print(summary + "\n", flush=True)
        rows.append(summary)
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
