"""What a batched enqueue costs at two schema revisions, batch by batch in turns.

Two stores on one server (PostgreSQL: scratch databases on 127.0.0.1:5432;
SQLite: files under the temporary folder), one migrated to ``--before``
(default 0009) and one to ``--after`` (default: the newest), take the same
batches of ``--batch`` runs through the store's own batched enqueue, in turns,
so that the load of the machine falls on both alike. Printed per 1,000 runs:
wall time (median and best), this process's CPU time, and on PostgreSQL the
CPU time of the server process that ran the statements, read from /proc
(on this host only), and the WAL records and bytes of one batch (EXPLAIN
ANALYZE, WAL). CPU time and WAL are what the schema changes; the wall time
follows them on an idle machine only.

    .venv/bin/python bench/schema_writes.py [--store postgres|sqlite] [--rounds 5]
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
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ferryman.store import migrate  # noqa: E402
from ferryman.store.dialect import Backend, create_backend  # noqa: E402
from ferryman.store.postgres import PostgresBackend  # noqa: E402
from ferryman.store.postgres_enqueue import ENQUEUE_MANY, array_params  # noqa: E402
from ferryman.store.run_rows import NewRun  # noqa: E402

ADMIN = "host=127.0.0.1 user=postgres dbname=postgres"
BATCHES = 20  # per round: the table grows to BATCHES * --batch runs, then is emptied


def stores(kind: str, revisions: list[str]) -> dict[str, str]:
    """A fresh store per revision, migrated to it: {revision: URL}."""
    urls = {}
    folder = tempfile.mkdtemp(prefix="ferryman_schema_writes_")
    for revision in revisions:
        if kind == "postgres":
            name = f"ferryman_schema_writes_{os.getpid()}_{revision}"
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            urls[revision] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        else:
            urls[revision] = f"sqlite:///{folder}/{revision}.db"
        engine = sa.create_engine(urls[revision])
        with engine.begin() as conn:
            command.upgrade(migrate._config(conn), revision)
        engine.dispose()
    return urls


def batch(tag: str, size: int) -> list[NewRun]:
    return [
        NewRun(job="noop", run_key=f"{tag}-{i}", payload_json=json.dumps({"i": i}), max_attempts=3)
        for i in range(size)
    ]


def server_cpu(backend: Backend, pids: dict[int, int]) -> float:
    """CPU seconds of the PostgreSQL process behind the backend's submit connection."""
    if not isinstance(backend, PostgresBackend):
        return 0.0
    pid = pids.get(id(backend))
    if pid is None:
        with backend._submits.lock:
            pid = backend._submits.rows("SELECT pg_backend_pid(), ''::bytea", {})[0][0]
        pids[id(backend)] = pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def enqueue(backend: Backend, runs: list[NewRun]) -> None:
    """The batched enqueue ``app.submit`` takes (one statement on PostgreSQL)."""
    if backend.enqueues_committed:
        backend.enqueue_committed(runs)
        return
    with backend.transaction() as conn:
        backend.enqueue(conn, runs, backend.clock(conn))


def empty(backend: Backend) -> None:
    with backend.transaction() as conn:
        conn.execute(sa.text("DELETE FROM ferryman_run_events"))
        conn.execute(sa.text("DELETE FROM ferryman_runs"))


def measure(backends: dict[str, Backend], rounds: int, size: int) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {
        revision: {"wall": [], "cpu": 0.0, "server": 0.0} for revision in backends
    }
    pids: dict[int, int] = {}
    for round_ in range(rounds):
        for backend in backends.values():
            empty(backend)
        for number in range(BATCHES):
            turn = list(backends)
            if (round_ + number) % 2:
                turn.reverse()
            for revision in turn:
                backend, seen = backends[revision], figures[revision]
                runs = batch(f"r{round_}b{number}", size)
                server, cpu, wall = (
                    server_cpu(backend, pids),
                    time.process_time(),
                    time.perf_counter(),
                )
                enqueue(backend, runs)
                seen["wall"].append(time.perf_counter() - wall)
                seen["cpu"] += time.process_time() - cpu
                seen["server"] += server_cpu(backend, pids) - server
    return figures


def wal_per_batch(url: str, size: int) -> str:
    """WAL records and bytes of one batch, rolled back (PostgreSQL)."""
    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        plan = conn.execute(
            "EXPLAIN (ANALYZE, WAL) " + ENQUEUE_MANY, array_params(batch("wal", size))
        ).fetchall()
        conn.rollback()
    text = "\n".join(str(row[0]) for row in plan)  # the first WAL line: the whole statement's
    found = re.search(r"WAL: records=(\d+)(?: fpi=\d+)? bytes=(\d+)", text)
    assert found is not None, text
    return f"WAL {int(found.group(1)):,} records, {int(found.group(2)):,} bytes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--before", default="0009")
    parser.add_argument("--after", default="head")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    urls = stores(args.store, [args.before, args.after])
    backends = {revision: create_backend(url, pool_size=1) for revision, url in urls.items()}
    try:
        figures = measure(backends, args.rounds, args.batch)
        runs = args.rounds * BATCHES * args.batch
        for revision, seen in figures.items():
            per_batch = 1e6 / args.batch  # seconds per batch -> ms per 1,000 runs
            wall = seen["wall"]
            line = (
                f"{args.store} at {revision}: per 1,000 runs"
                f" {statistics.median(wall) * per_batch:.1f} ms median,"
                f" {min(wall) * per_batch:.1f} ms best; CPU here"
                f" {seen['cpu'] * 1e6 / runs:.1f} ms"
            )
            if args.store == "postgres":
                line += f", server {seen['server'] * 1e6 / runs:.1f} ms; "
                line += wal_per_batch(urls[revision], 1000)
            print(line, flush=True)
        before, after = (statistics.median(figures[r]["wall"]) for r in (args.before, args.after))
        print(f"runs/s {args.after} / {args.before}: {before / after:.2f} (median batch)")
    finally:
        for backend in backends.values():
            backend.dispose()
        if args.store == "sqlite":
            shutil.rmtree(Path(sa.make_url(urls[args.after]).database or "").parent)
        else:
            with psycopg.connect(ADMIN, autocommit=True) as admin:
                for url in urls.values():
                    name = sa.make_url(url).database
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
