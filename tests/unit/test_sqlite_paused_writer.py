"""SQLite: a process paused inside a write transaction stalls the others only for the busy timeout.

SQLite cannot take the write lock away from a paused process (PostgreSQL
can: its leases are fenced by the database). What ferryman promises is that
nobody waits for it forever: writers give up after the busy timeout with an
error that says why, the worker's loops retry, and the CLI exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ferryman as fm
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]

HOLD_THE_WRITE_LOCK = """
import os, signal, sys
import ferryman as fm
app = fm.App(sys.argv[1])
with app.store.transaction():
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # paused inside the transaction
"""


@pytest.fixture
def paused_writer(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A store, and a process paused while it holds the store's write lock."""
    url = f"sqlite:///{tmp_path}/store.db"
    app = fm.App(url)
    app.job(name="noop")(lambda ctx, payload: None)
    app.submit("noop", fm.RunRequest("warm-up"))  # the store and its lock file exist
    app.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_WRITE_LOCK, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        wait_until(lambda: _stopped(holder.pid), what="the holder to be paused")
        yield url, holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("T")


def test_a_writer_gives_up_after_the_busy_timeout_naming_the_lock(
    paused_writer: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = paused_writer
    app = fm.App(f"{url}?busy_timeout=0.5")
    app.job(name="noop")(lambda ctx, payload: None)
    outcome: list[BaseException | None] = []

    def cancel() -> None:
        try:
            app.cancel(1)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    try:
        for _ in range(3):  # each try gives up on its own; the waiting thread is reused
            started = time.monotonic()
            writer = threading.Thread(target=cancel, daemon=True)
            writer.start()
            writer.join(timeout=20)
            assert not writer.is_alive(), "the write waited for the paused process"
            assert 0.4 < time.monotonic() - started < 10
        assert len(outcome) == 3
        for error in outcome:
            assert isinstance(error, fm.StoreUnavailable)
            assert str(tmp_path / "store.db-writer.lock") in str(error)
            assert "another process holds it" in str(error)
        waiting = [t for t in threading.enumerate() if t.name.startswith("ferryman-writer-lock")]
        assert len(waiting) == 1
        untouched = app.get_run(1)
        assert untouched is not None and untouched.status == fm.RunStatus.QUEUED
    finally:
        app.close()


def test_the_cli_exits_with_one_line_instead_of_hanging(
    paused_writer: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = paused_writer
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["COLUMNS"] = "500"
    done = subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", f"{url}?busy_timeout=1", "cancel", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: gave up after 1s waiting for the write lock")
    assert str(tmp_path / "store.db-writer.lock") in lines[0]


def test_a_worker_retries_until_the_paused_process_is_gone(
    paused_writer: tuple[str, subprocess.Popen[str]], caplog: pytest.LogCaptureFixture
) -> None:
    url, holder = paused_writer
    app = fm.App(f"{url}?busy_timeout=0.3")
    done: list[str] = []
    app.job(name="noop")(lambda ctx, payload: done.append(ctx.run_key))
    reports: list[object] = []
    caplog.set_level(logging.WARNING, logger="ferryman.worker")
    worker = threading.Thread(
        target=lambda: reports.append(app.work(until_idle=True, handle_signals=False)),
        daemon=True,
    )
    try:
        worker.start()
        wait_until(
            lambda: any("waiting for the write lock" in r.getMessage() for r in caplog.records),
            what="the worker to report the held lock",
        )
        assert done == []
        holder.send_signal(signal.SIGKILL)  # the kernel drops its lock
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert done == ["warm-up"]
        assert app.get_runs()[0].status == fm.RunStatus.SUCCEEDED
    finally:
        app.close()
