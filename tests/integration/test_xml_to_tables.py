"""The XML reference pipeline end to end through the ``ferryman`` command, on both stores.

A user stages applications, lets the sensor find them, works them with a
process pool, lists the rejected ones with their reasons, fixes one in the
staging table and retries it: these tests do exactly that, with the example
app and the real CLI, and check the tables against a reference mapping.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess

import sqlalchemy as sa
from examples.xml_to_tables.generator import application
from examples.xml_to_tables.mapping import map_application
from examples.xml_to_tables.schema import app_base, app_xml
from examples.xml_to_tables.stage import stage
from examples.xml_to_tables.verify import verify

import ferryman as fm
from tests.xml_support import (
    REPO,
    cli_env,
    ferryman_command,
    reference_rows,
    run_ferryman,
    stored_rows,
)

SEED = 4242
APPS = 80


def test_load_list_rejections_fix_and_retry(store_url: str) -> None:
    app = fm.App(store_url)
    try:
        staged = stage(app.engine, APPS, bad_share=0.25, seed=SEED)
        bad = {a.app_id for a in staged if a.defect}
        assert len(bad) >= 5

        for command in (("tick",), ("work", "--until-idle", "--processes", "2")):
            done = run_ferryman(store_url, *command)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "Traceback" not in done.stderr

        assert set(verify(app.engine).values()) == {0}
        expected = reference_rows(staged)
        for table, rows in stored_rows(app).items():
            assert sorted(rows) == sorted(expected[table]), table

        # The user's view of what was rejected, and why.
        listed = run_ferryman(
            store_url, "runs", "--status", "failed", "--job", "load_application", "--json"
        )
        assert listed.returncode == 0, listed.stderr
        failed = json.loads(listed.stdout)
        assert {int(run["run_key"].split(":")[1]) for run in failed} == bad
        for run in failed:
            app_id = run["run_key"].split(":")[1]
            assert run["last_error"].startswith(f"app {app_id}: "), run["last_error"]

        # Fix one application in the staging table, retry its run, and it loads.
        fixed = min(bad)
        (fixed_run,) = (run for run in failed if run["run_key"] == f"app_xml:{fixed}")
        good_xml = application(SEED, fixed, bad_share=0.0).xml
        with app.engine.begin() as conn:
            conn.execute(app_xml.update().where(app_xml.c.app_id == fixed).values(xml=good_xml))
        retried = run_ferryman(store_url, "retry", str(fixed_run["id"]))
        assert retried.returncode == 0, retried.stderr
        assert "requeued 1 runs" in retried.stdout
        worked = run_ferryman(store_url, "work", "--until-idle")
        assert worked.returncode == 0, worked.stderr

        run = app.get_run(fixed_run["id"])
        assert run is not None
        assert (run.status, run.last_error) == (fm.RunStatus.SUCCEEDED, None)
        with app.store.read("reading the fixed application") as conn:
            base = conn.execute(sa.select(app_base).where(app_base.c.app_id == fixed)).one()
        assert base._asdict() == map_application(fixed, good_xml)["app_base"][0]
        still_failed = {int(r.run_key.split(":")[1]) for r in app.get_runs(status="failed")}
        assert still_failed == bad - {fixed}
        assert set(verify(app.engine).values()) == {0}
    finally:
        app.close()


def test_work_shows_live_progress_on_a_terminal(sqlite_url: str) -> None:
    app = fm.App(sqlite_url)
    try:
        staged = stage(app.engine, 120, bad_share=0.1, seed=SEED)
        bad = sum(1 for a in staged if a.defect)
    finally:
        app.close()
    assert run_ferryman(sqlite_url, "tick").returncode == 0

    # The command attached to a pseudo-terminal, as in an interactive shell.
    controller, terminal = pty.openpty()
    env = {**cli_env(30.0), "TERM": "xterm-256color", "COLUMNS": "160"}
    worker = subprocess.Popen(
        ferryman_command(sqlite_url, "work", "--until-idle"),
        cwd=REPO,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    screen = bytearray()
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command exited
            break
        if not chunk:
            break
        screen.extend(chunk)
    os.close(controller)
    assert worker.wait(timeout=60) == 0
    text = screen.decode(errors="replace")
    assert "load_application" in text
    assert "120/120" in text
    assert f"{120 - bad} succeeded" in text
    assert f"{bad} failed" in text
    assert "runs/s" in text
    # Per-run INFO lines are held back while the view shows the counts.
    assert "run rejected" not in text
    assert f"worked: {120 - bad} succeeded" in text
