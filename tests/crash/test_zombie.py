"""A zombie worker: paused past its lease, it wakes up and tries to commit.

Worker A claims a run and is SIGSTOPped mid-job (its heartbeat thread stops
with it, as it would in a long GC pause, a frozen VM or a network partition).
Once A's lease has expired by the store's clock, worker B takes the run over
and commits. Then A resumes and reaches ``ctx.transaction()``: the fenced
commit is refused with ``LeaseLost`` and A's effect never lands.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.crash.support import (
    assert_taken_over,
    lease_expired,
    read_report,
    start_worker,
    stop,
)
from tests.crash.worker_main import build_app, effects, metadata
from tests.helpers import wait_until

LEASE_SECONDS = 1.0


def process_state(pid: int) -> str:
    """The state letter from /proc/PID/stat (R, S, T, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def in_transaction(app: fm.App) -> bool:
    """Whether some other client is inside a transaction on the store database."""
    if app.store.backend.name == "sqlite":
        path = app.store.backend.url.database
        assert path is not None
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                return True
            raise
        else:
            probe.execute("ROLLBACK")
            return False
        finally:
            probe.close()
    if app.store.backend.name == "mariadb":
        query = (
            "SELECT count(*) FROM information_schema.innodb_trx AS t"
            " JOIN information_schema.processlist AS p ON p.id = t.trx_mysql_thread_id"
            " WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
        )
    else:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state <> 'idle'"
        )
    with app.store.read("looking for open transactions") as conn:
        busy = conn.execute(sa.text(query)).scalar_one()
    return bool(busy)


def pause_outside_transaction(process: subprocess.Popen[bytes], app: fm.App) -> None:
    """SIGSTOP ``process`` at a moment when it holds no transaction open.

    Stopped inside one (a heartbeat, say), it would hold SQLite's write lock or
    PostgreSQL's row lock, and nobody could take the run over.
    """

    def paused_cleanly() -> bool:
        os.kill(process.pid, signal.SIGSTOP)
        wait_until(lambda: process_state(process.pid) == "T", timeout=10, what="SIGSTOP")
        if not in_transaction(app):
            return True
        os.kill(process.pid, signal.SIGCONT)
        return False

    wait_until(paused_cleanly, timeout=30, what="a moment without an open transaction")


@pytest.mark.crash
@pytest.mark.timeout(90)
def test_paused_worker_cannot_commit_after_its_run_was_taken_over(
    store_url: str, tmp_path: Path
) -> None:
    app = build_app(store_url, lease_seconds=LEASE_SECONDS)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        metadata.create_all(app.engine)
        (run_id,) = app.submit("zombie", fm.RunRequest("zombie-1")).run_ids
        common = ("--lease-seconds", str(LEASE_SECONDS), "--concurrency", "1", "--until-idle")

        # A claims the run and its job starts, then waits at the gate.
        a = start_worker(
            store_url,
            tmp_path / "a.log",
            *common,
            "--gate",
            str(tmp_path),
            "--report",
            str(tmp_path / "a.json"),
        )
        processes.append(a)
        wait_until(lambda: (tmp_path / "zombie-1.started").exists(), what="A's job to start")

        # A freezes, heartbeat and all, until its lease runs out.
        pause_outside_transaction(a, app)
        wait_until(
            lambda: lease_expired(app, run_id), timeout=LEASE_SECONDS * 20, what="A's lease expiry"
        )

        # B takes the run over and commits its effect.
        b = start_worker(
            store_url, tmp_path / "b.log", *common, "--report", str(tmp_path / "b.json")
        )
        processes.append(b)
        assert b.wait(timeout=60) == 0, (tmp_path / "b.log").read_text()
        b_report = read_report(tmp_path / "b.json")
        assert (b_report["claimed"], b_report["succeeded"], b_report["lease_lost"]) == (1, 1, 0)

        # A wakes up and its job goes on to ctx.transaction().
        os.kill(a.pid, signal.SIGCONT)
        (tmp_path / "zombie-1.go").touch()
        assert a.wait(timeout=60) == 0, (tmp_path / "a.log").read_text()
        a_report = read_report(tmp_path / "a.json")
        assert (a_report["claimed"], a_report["succeeded"], a_report["lease_lost"]) == (1, 0, 1)
        assert a_report["errors"] == []
        assert "lease lost" in (tmp_path / "a.log").read_text()

        run = app.get_run(run_id)
        assert run is not None
        assert (run.status, run.attempt, run.lease_token) == (fm.RunStatus.SUCCEEDED, 2, 2)

        with app.store.read("reading effects") as conn:
            rows = conn.execute(sa.select(effects)).all()
        assert [(row.run_key, row.worker_pid, row.attempt, row.lease_token) for row in rows] == [
            ("zombie-1", b.pid, 2, 2)
        ]

        assert_taken_over(app, run_id, a_report["worker_id"], b_report["worker_id"])
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
            stop(process)
        app.close()
