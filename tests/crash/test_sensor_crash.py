"""Kill -9 daemons while their poll sensor evaluates, again and again.

A directory sensor (cursor: the last file name taken, three files per
evaluation) runs in ``app.run()`` in two daemon processes at once, so their
evaluations also race each other. The test keeps adding files and, over and
over, picks a daemon that has recorded evaluations, kills it with SIGKILL at
a random moment — before, during or after a commit — and starts another.
Afterwards every file has exactly one run and the history shows the cursor
only ever moved forward, one state version at a time.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.crash.support import report_storm, storm_setting
from tests.helpers import wait_until
from tests.integration.test_sensors_concurrency import start
from tests.sensor_apps import assert_history_consistent, files_app

DAEMONS = 2
# make soak sets FERRYMAN_STORM_KILLS and _SECONDS for longer storms.
KILLS = int(storm_setting("KILLS", 30))
TIME_BUDGET = storm_setting("SECONDS", 10.0)  # seconds of killing per store
TIMEOUT = 300 + (TIME_BUDGET - 10.0)  # the suite's default, plus what a longer storm adds


def evaluated(app: fm.App, daemons: list[subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
    """The daemons that have recorded at least one evaluation (so are past their start-up)."""
    host = socket.gethostname()
    with app.engine.begin() as conn:
        evaluators = set(
            conn.execute(sa.text("SELECT DISTINCT evaluator FROM ferryman_sensor_evaluations"))
            .scalars()
            .all()
        )
    return [daemon for daemon in daemons if f"{host}:{daemon.pid}" in evaluators]


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_sigkill_during_evaluations_loses_and_doubles_nothing(
    store_url: str, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FERRYMAN_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    app = files_app(store_url, inbox)
    app.tick()  # the store is set up before the daemons start
    files: list[str] = []

    def add_files() -> None:
        for _ in range(rng.randint(2, 7)):
            name = f"{len(files):05}.xml"
            (inbox / name).write_text("<doc/>")
            files.append(name)

    add_files()
    daemons = [start("files", store_url, str(inbox)) for _ in range(DAEMONS)]
    kills = 0
    deadline = time.monotonic() + TIME_BUDGET
    try:
        while kills < KILLS and time.monotonic() < deadline:
            add_files()
            ready = wait_until(lambda: evaluated(app, daemons), what="a daemon evaluating")
            victim = rng.choice(ready)
            time.sleep(rng.uniform(0, 0.05))  # where the kill lands, not a synchronisation
            victim.kill()
            victim.communicate()
            daemons.remove(victim)
            daemons.append(start("files", store_url, str(inbox)))
            kills += 1
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.communicate()
    assert kills >= 4, f"only {kills} kills in the time budget (seed {seed})"

    try:
        # Catch up in this process; nothing was lost, so nothing needs repairing.
        for _ in range(len(files)):
            (evaluation,) = app.tick(force=True)
            assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
            if evaluation.runs_requested == 0:
                break
        run_keys = [run.run_key for run in app.get_runs(job="ingest_file")]
        report_storm(
            "sensors",
            store_url,
            kills=kills,
            unit="files",
            items=len(files),
            lost=len(set(files) - set(run_keys)),
            duplicated=len(run_keys) - len(set(run_keys)),
        )
        assert sorted(run_keys) == files, f"seed {seed}"
        assert len(set(run_keys)) == len(run_keys)
        assert app.get_sensor("files").cursor == files[-1]
        ok = assert_history_consistent(app, "files")
        # Each committed evaluation took the next files after its cursor, never earlier ones.
        for evaluation in ok:
            if evaluation.runs_requested:
                assert evaluation.cursor_after is not None
                assert evaluation.cursor_before is None or (
                    evaluation.cursor_before < evaluation.cursor_after
                )
    finally:
        app.close()
