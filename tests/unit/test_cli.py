"""The ``ferryman`` command, run as a user runs it: a real process on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Store
from ferryman.store.migrate import VERSION_TABLE, code_head

REPO = Path(__file__).resolve().parents[2]


def ferryman(*args: str, store: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ferryman"]
    if store is not None:
        command += ["--store", store]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert text in lines[0]


@pytest.fixture
def seeded(store_url: str) -> str:
    """A store with one good, one rejected and one flaky (dead after 2 attempts) run."""
    from tests.cli_app import app

    app.use_store(store_url)
    try:
        app.submit(
            "convert",
            fm.RunRequest("doc-1", {"kind": "good"}),
            fm.RunRequest("doc-2", {"kind": "bad", "format": "wpd"}),
            fm.RunRequest("doc-3", {"kind": "flaky"}),
        )
    finally:
        app.close()
        app.store_url = fm.app.DEFAULT_STORE
    return store_url


def test_work_then_inspect_then_retry(seeded: str) -> None:
    worked = ferryman("--app", "tests.cli_app:app", "work", "--until-idle", store=seeded)
    assert worked.returncode == 0, worked.stderr
    assert "1 succeeded, 1 retried, 1 failed, 1 dead" in worked.stderr

    listed = ferryman("runs", "--json", store=seeded)
    runs = {run["run_key"]: run for run in json.loads(listed.stdout)}
    assert {key: run["status"] for key, run in runs.items()} == {
        "doc-1": "succeeded",
        "doc-2": "failed",
        "doc-3": "dead",
    }
    assert runs["doc-2"]["last_error"] == "doc-2: unsupported format 'wpd'"

    failed = ferryman("runs", "--status", "failed", store=seeded)
    assert "doc-2" in failed.stdout and "doc-1" not in failed.stdout

    shown = ferryman("runs", "show", str(runs["doc-3"]["id"]), "--json", store=seeded)
    events = [event["kind"] for event in json.loads(shown.stdout)["events"]]
    assert events == ["requested", "claimed", "retry_scheduled", "claimed", "dead"]
    human = ferryman("runs", "show", str(runs["doc-3"]["id"]), store=seeded)
    assert "RuntimeError: converter crashed" in human.stdout

    status = ferryman("status", "--json", store=seeded)
    (summary,) = json.loads(status.stdout)["jobs"]
    assert summary["counts"] == {"succeeded": 1, "failed": 1, "dead": 1}

    retried = ferryman("retry", "--status", "dead", store=seeded)
    assert retried.returncode == 0 and "requeued 1 runs" in retried.stdout
    assert ferryman("retry", "--status", "dead", store=seeded).returncode == 1  # nothing left

    again = ferryman("--app", "tests.cli_app:app", "work", "--until-idle", store=seeded)
    assert "1 retried" in again.stderr
    runs_after = {
        r["run_key"]: r for r in json.loads(ferryman("runs", "--json", store=seeded).stdout)
    }
    assert runs_after["doc-3"]["status"] == "dead"  # the flaky doc needs 3 attempts, has 2


def test_show_missing_run(seeded: str) -> None:
    assert_one_line_error(ferryman("runs", "show", "999", store=seeded), 1, "no run 999")


def test_work_needs_an_app(sqlite_url: str) -> None:
    assert_one_line_error(ferryman("work", store=sqlite_url), 2, "--app")


def test_unloadable_app(sqlite_url: str) -> None:
    result = ferryman("--app", "tests.no_such_module:app", "work", store=sqlite_url)
    assert_one_line_error(result, 2, "cannot import 'tests.no_such_module'")


def test_bad_url_is_a_usage_error() -> None:
    assert_one_line_error(ferryman("status", store="postgre://x/y"), 2, "unsupported store URL")


def test_unreachable_store_exit_code() -> None:
    result = ferryman("status", store="postgresql://u:hunter2@127.0.0.1:1/db")
    assert_one_line_error(result, 3, "cannot reach store")
    assert "hunter2" not in result.stderr


def test_newer_schema_exit_code(store_url: str) -> None:
    Store(store_url, create=True).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
    engine.dispose()
    assert_one_line_error(ferryman("status", store=store_url), 4, "newer than this version")


def test_db_upgrade_is_idempotent(sqlite_url: str) -> None:
    newest = code_head()  # the newest migration this code ships
    assert newest is not None
    first = ferryman("db", "upgrade", store=sqlite_url)
    assert first.returncode == 0 and f"upgraded from nothing to {newest}" in first.stdout
    second = ferryman("db", "upgrade", store=sqlite_url)
    assert second.returncode == 0 and f"already at revision {newest}" in second.stdout
