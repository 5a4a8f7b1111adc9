"""A daemon with a fast schedule, for the schedule crash test.

``python -m tests.crash.schedule_main STORE REAL_START FAKE_START SPEED`` runs
``app.run()`` with the schedule ``fast`` (``* * * * * *``, ``catch_up="all"``)
on a fake clock shared by every process of the test: it shows ``FAKE_START``
(epoch seconds) at the real instant ``REAL_START`` and runs ``SPEED`` times
faster than real time, so 200 one-second ticks pass in 200 / SPEED seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import ferryman as fm

SCHEDULE = "fast"


def fast_clock(real_start: float, fake_start: float, speed: float) -> Callable[[], datetime]:
    def now() -> datetime:
        return datetime.fromtimestamp(fake_start + (time.time() - real_start) * speed, tz=UTC)

    return now


def schedule_app(store: str, clock: Callable[[], datetime]) -> fm.App:
    app = fm.App(store, lease_seconds=5)

    @app.job
    def on_tick(ctx: fm.JobContext, payload: object) -> None: ...

    # The interval bounds the wait in real seconds: the clock's seconds are faster.
    app.schedule(
        SCHEDULE,
        job="on_tick",
        cron="* * * * * *",
        catch_up="all",
        max_catch_up=1000,
        interval=0.05,
        clock=clock,
    )
    return app


def main(store: str, real_start: str, fake_start: str, speed: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    clock = fast_clock(float(real_start), float(fake_start), float(speed))
    schedule_app(store, clock).run(concurrency=1, grace_seconds=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
