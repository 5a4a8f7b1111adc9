"""SQLite on a full disk: writes fail with a clear error, and the same worker carries on.

The test mounts a small tmpfs of its own (so it needs root; it is skipped,
saying so, otherwise) and puts the store on it. A real ``ferryman work``
process runs jobs that write padded effect rows through
``ctx.transaction()``. Once it is under way, a filler file takes every byte
left: the store's writes fail. Then the filler is deleted and the same
worker, never restarted, finishes the work. Every run must then have
succeeded on its first attempt with exactly one effect row (the job allows
one attempt: an attempt the full disk used up shows as a dead run), and the
database must pass ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.crash.support import REPO, processing_log, status_counts
from tests.faults.disk_app import app, effects, metadata
from tests.helpers import wait_until

DISK_SIZE = "16m"
RUNS = 1000
WORK_MS = 10
PADDING = 2000  # characters per effect row: the disk fills after some hundreds of runs
UNDER_WAY = 50  # runs succeeded before the disk fills
# The full disk may delay runs, never fail them or let their leases lapse.
FAULT_KINDS = {"failed", "dead", "lease_expired"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``DISK_SIZE`` mounted for this test, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs this test fills needs root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "fm-disk", str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        # Lazy: detached at once even while a descriptor of this process is
        # still open on it (the memory goes when the last one closes).
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True, capture_output=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; return it."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    stats = os.statvfs(disk)
    assert stats.f_bavail == 0, f"{stats.f_bavail} blocks still free on {disk}"
    return filler


def start_worker(store_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    with log.open("ab") as output:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "ferryman", "--app", "tests.faults.disk_app:app"),
                *("--store", store_url, "--log-level", "INFO"),
                *("work", "--concurrency", "4", "--no-progress"),
            ],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def job_errors(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_a_full_disk_fails_writes_clearly_and_the_same_worker_carries_on(
    small_disk: Path, tmp_path: Path
) -> None:
    store_url = f"sqlite:///{small_disk}/store.db"
    errors_file = tmp_path / "job-errors.jsonl"  # off the small disk
    log = tmp_path / "worker.log"
    app.use_store(store_url)
    worker: subprocess.Popen[bytes] | None = None
    try:
        metadata.create_all(app.engine)
        payload = {"work_ms": WORK_MS, "padding": PADDING, "errors": str(errors_file)}
        app.submit("write_padded", *(fm.RunRequest(f"run-{i:04d}", payload) for i in range(RUNS)))
        worker = start_worker(store_url, log)
        wait_until(
            lambda: status_counts(app).get("succeeded", 0) >= UNDER_WAY,
            what="the worker to be under way",
        )

        # -- the disk fills: the store's writes fail, with a clear error -------
        filler = fill(small_disk)
        seen = wait_until(lambda: job_errors(errors_file), timeout=60, what="a job's write to fail")
        assert worker.poll() is None, log.read_text()[-3000:]

        # -- space comes back: the same worker carries on -----------------------
        filler.unlink()
        wait_until(
            lambda: not {"queued", "running"} & set(status_counts(app)),
            timeout=60,
            what="every run to end",
        )
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log.read_text()[-3000:]
        output = log.read_text()

        seen = job_errors(errors_file)
        store_errors = [error for error in seen if error["store_error"]]
        assert store_errors == seen, f"a write on the full disk failed without a StoreError: {seen}"
        for error in seen:
            # Which disk is full, and where: the message names the store's directory.
            assert re.search(r"\bdisk\b.*\bfull\b", error["message"]), error
            assert str(small_disk) in error["message"], error

        assert status_counts(app) == {"succeeded": RUNS}, output[-3000:]
        with app.store.read("reading effects") as conn:
            rows = conn.execute(
                sa.select(effects.c.run_key, effects.c.attempt, effects.c.worker_id)
            )
            effect_rows = rows.all()
        per_key = Counter(row.run_key for row in effect_rows)
        assert {key: n for key, n in per_key.items() if n != 1} == {}, "effects applied twice"
        assert set(per_key) == {f"run-{i:04d}" for i in range(RUNS)}, "effects lost"
        # One worker did it all: it rode out the full disk rather than dying.
        assert len({row.worker_id for row in effect_rows}) == 1

        for run_key, events in processing_log(app).items():
            kinds = Counter(event["kind"] for event in events)
            assert not FAULT_KINDS & set(kinds), (run_key, events)
            assert kinds["succeeded"] == 1, (run_key, events)
            claims = [event["attempt"] for event in events if event["kind"] == "claimed"]
            assert set(claims) == {1}, (run_key, events)
        worked = re.search(
            r"worked: (\d+) succeeded, \d+ retried, (\d+) failed, (\d+) dead", output
        )
        assert worked is not None, output[-3000:]
        assert worked.groups() == (str(RUNS), "0", "0"), worked.group(0)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        app.close()

    database = sqlite3.connect(small_disk / "store.db")
    try:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        database.close()
