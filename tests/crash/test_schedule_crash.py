"""Kill -9 daemons evaluating one fast schedule: still exactly one run per tick.

Two ``app.run()`` daemons (``tests/crash/schedule_main.py``) evaluate the
schedule ``fast`` (``* * * * * *``, ``catch_up="all"``) on a fake clock ten
times faster than real time, so their evaluations race each other and the
ticks come every tenth of a second. Over 200 ticks the test picks, again and
again, a daemon that has recorded evaluations, kills it with SIGKILL at a
random moment and starts another. Afterwards every tick from the schedule's
start to its cursor has exactly one run — no gap, no double — and each
committed evaluation asked for exactly the ticks between its cursors.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.sensors.schedule import iso, parse_instant
from tests.crash.schedule_main import SCHEDULE, fast_clock, schedule_app
from tests.crash.support import REPO, report_storm, storm_setting
from tests.helpers import wait_until
from tests.sensor_apps import assert_history_consistent

DAEMONS = 2
MIN_KILLS = 5
SPEED = 10.0
# make soak sets FERRYMAN_STORM_SCHEDULE_TICKS for a longer storm.
TICKS = int(storm_setting("SCHEDULE_TICKS", 200))
TIMEOUT = 120 + 2 * TICKS / SPEED
FAKE_START = datetime.fromisoformat("2026-06-01T12:00:00.5Z").timestamp()


def start(store_url: str, real_start: float) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    arguments = [store_url, str(real_start), str(FAKE_START), str(SPEED)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.schedule_main", *arguments],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def evaluators(app: fm.App) -> set[str]:
    with app.engine.begin() as conn:
        return set(
            conn.execute(sa.text("SELECT DISTINCT evaluator FROM ferryman_sensor_evaluations"))
            .scalars()
            .all()
        )


def last_tick(cursor: str | None) -> datetime:
    assert cursor is not None and cursor.startswith("last tick "), cursor
    return parse_instant(cursor.removeprefix("last tick ").split(",")[0])


def seconds_between(first: datetime, last: datetime) -> list[str]:
    """The one-second ticks after ``first`` up to ``last``, as run_keys."""
    count = int((last - first).total_seconds())
    return [f"{SCHEDULE}:{iso(first + timedelta(seconds=n))}" for n in range(1, count + 1)]


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_sigkilled_daemons_run_each_tick_exactly_once(store_url: str) -> None:
    seed = int(os.environ.get("FERRYMAN_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    real_start = time.time()
    clock = fast_clock(real_start, FAKE_START, SPEED)
    app = schedule_app(store_url, clock)
    app.tick()  # the store is set up and the schedule started before the daemons
    first = last_tick(app.get_sensor(SCHEDULE).cursor)
    end = first + timedelta(seconds=TICKS)
    host = socket.gethostname()
    daemons = [start(store_url, real_start) for _ in range(DAEMONS)]
    kills = 0
    try:
        # At least MIN_KILLS kills, however slowly a loaded machine starts daemons.
        while clock() < end or kills < MIN_KILLS:
            ready = wait_until(
                lambda: [d for d in daemons if f"{host}:{d.pid}" in evaluators(app)],
                what="a daemon evaluating",
            )
            victim = rng.choice(ready)
            time.sleep(rng.uniform(0, 0.3))  # where the kill lands, not a synchronisation
            victim.kill()
            victim.wait()
            daemons.remove(victim)
            daemons.append(start(store_url, real_start))
            kills += 1
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait()

    try:
        (evaluation,) = app.tick(force=True)  # catch up what came since the last kill
        assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
        last = last_tick(app.get_sensor(SCHEDULE).cursor)
        expected = seconds_between(first, last)
        run_keys = [run.run_key for run in app.get_runs(job="on_tick")]
        report_storm(
            "schedules",
            store_url,
            kills=kills,
            unit="ticks",
            items=len(expected),
            lost=len(set(expected) - set(run_keys)),
            duplicated=len(run_keys) - len(set(run_keys)),
        )
        assert len(expected) >= TICKS
        assert sorted(run_keys) == expected, f"seed {seed}"
        ok = assert_history_consistent(app, SCHEDULE)
        assert len({e.evaluator for e in ok}) > DAEMONS, "the daemons shared the evaluations"
        for committed in ok[1:]:
            # each winner asked for exactly the ticks between its cursors, none twice
            span = seconds_between(
                last_tick(committed.cursor_before), last_tick(committed.cursor_after)
            )
            assert committed.runs_requested == len(span), (committed, seed)
            assert committed.runs_deduplicated == 0, (committed, seed)
    finally:
        app.close()
