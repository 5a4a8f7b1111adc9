"""The crash storms' harness: workers SIGKILLed at random, a last worker, the exactly-once check.

Every storm does the same three things, and does them here:

1. :class:`Storm` starts worker processes and, to a random rhythm, SIGKILLs
   one of those holding runs (so that kills land mid-work, not on a process
   still starting) and starts another in its slot, until the storm has
   struck enough; when its block ends, every worker is killed.
2. :func:`last_worker` waits for the killed workers' leases to expire and
   lets one more worker take over what they left, with ``--until-idle``.
3. :func:`assert_each_effect_once` reads the effects table, reports the storm
   (``FERRYMAN_STORM_REPORT``, for ``make soak``) and checks that every
   expected effect landed exactly once.
"""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from tests.crash.support import (
    lease_holders,
    live_leases,
    read_report,
    report_storm,
    start_worker,
    status_counts,
    stop,
)
from tests.crash.worker_main import effects
from tests.helpers import wait_until

WORKER_MAIN = "tests.crash.worker_main"


@dataclass
class Storm:
    """Worker processes of one store, each in a slot, and the kills that struck them."""

    app: fm.App
    store_url: str
    logs: Path
    args: Sequence[str]
    main: str = WORKER_MAIN
    kills: int = 0

    def __post_init__(self) -> None:
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self, slot: int) -> subprocess.Popen[bytes]:
        return start_worker(
            self.store_url, self.logs / f"worker-{slot}.log", *self.args, main=self.main
        )

    def busy(self) -> list[int]:
        """The slots whose worker holds a lease right now."""
        holders = lease_holders(self.app)
        return [slot for slot, worker in enumerate(self.workers) if worker.pid in holders]

    def strike(
        self,
        rng: random.Random,
        *,
        interval: tuple[float, float],
        kills: float = math.inf,
        seconds: float = math.inf,
        enough: Callable[[], bool] = lambda: False,
    ) -> int:
        """Kill and replace busy workers until ``kills``, ``seconds`` or ``enough()``; the kills."""
        deadline = time.monotonic() + seconds
        while self.kills < kills and time.monotonic() < deadline:
            time.sleep(rng.uniform(*interval))  # the storm's rhythm, not a wait
            # On a loaded machine, start-up can outlast several beats; on a quick
            # one the work can run out within a beat, before enough() was asked.
            busy: list[int] = []

            def ready() -> bool:
                nonlocal busy
                busy = self.busy()
                return bool(busy) or enough()

            wait_until(ready, timeout=60, what="a worker holding runs")
            if not busy:  # enough() came true while no worker held runs
                break
            slot = rng.choice(busy)
            stop(self.workers[slot])
            self.kills += 1
            self.workers[slot] = self.start(slot)
            if enough():
                break
        return self.kills

    def succeeded_at_least(self, count: int) -> Callable[[], bool]:
        """``enough`` for :meth:`strike`: ``count`` runs have succeeded."""
        return lambda: status_counts(self.app).get("succeeded", 0) >= count


def seeded(logs: Path) -> tuple[random.Random, str]:
    """The storm's random rhythm, and the context its assertions print to replay it."""
    seed = random.randrange(2**32)
    return random.Random(seed), f"seed={seed}, worker logs in {logs}"


@contextlib.contextmanager
def storm(
    app: fm.App,
    store_url: str,
    logs: Path,
    *args: str,
    workers: int,
    main: str = WORKER_MAIN,
) -> Iterator[Storm]:
    """``workers`` processes of ``python -m MAIN STORE ARGS``, all SIGKILLed when the block ends."""
    started = Storm(app, store_url, logs, args, main)
    try:
        started.workers = [started.start(slot) for slot in range(workers)]
        yield started
    finally:
        for worker in started.workers:
            stop(worker)


@dataclass(frozen=True)
class LastWorker:
    """How the last worker ended: its exit status, its log and its report."""

    returncode: int
    log: Path
    report_path: Path

    def report(self) -> dict[str, Any]:
        """The last worker's WorkReport; it must have exited 0."""
        assert self.returncode == 0, self.log.read_text()
        return read_report(self.report_path)


def last_worker(
    app: fm.App,
    store_url: str,
    logs: Path,
    *args: str,
    lease_seconds: float,
    timeout: float,
    main: str = WORKER_MAIN,
) -> LastWorker:
    """Once the killed workers' leases expired, one more worker works until idle."""
    wait_until(
        lambda: live_leases(app) == 0,
        timeout=lease_seconds * 10,
        what="the killed workers' leases to expire",
    )
    log, report_path = logs / "final.log", logs / "final-report.json"
    final = start_worker(
        store_url, log, *args, "--until-idle", "--report", str(report_path), main=main
    )
    try:
        returncode = final.wait(timeout=timeout)
    finally:
        stop(final)
    return LastWorker(returncode, log, report_path)


def effect_rows(app: fm.App) -> tuple[Counter[str], dict[str, Any]]:
    """Effects per run_key, and the last effect row of each run_key."""
    with app.store.read("reading effects") as conn:
        rows = list(conn.execute(sa.select(effects).order_by(effects.c.id)))
    return Counter(row.run_key for row in rows), {row.run_key: row for row in rows}


def assert_each_effect_once(
    app: fm.App,
    name: str,
    store_url: str,
    *,
    kills: int,
    expected: Collection[str],
    context: str,
) -> dict[str, Any]:
    """Every expected run_key's effect landed once and no other did; the effect rows by key.

    The storm is reported (:func:`~tests.crash.support.report_storm`) before
    the check, so a failing storm still says what it lost or doubled.
    """
    per_key, rows = effect_rows(app)
    wanted = set(expected)
    report_storm(
        name,
        store_url,
        kills=kills,
        unit="runs",
        items=len(wanted),
        lost=len(wanted - set(per_key)),
        duplicated=sum(n - 1 for n in per_key.values()),
    )
    duplicates = {key: n for key, n in per_key.items() if n != 1}
    assert duplicates == {}, f"effects applied more than once: {duplicates} ({context})"
    lost = sorted(wanted - set(per_key))
    assert lost == [], f"{len(lost)} effects lost, the first {lost[:10]} ({context})"
    assert set(per_key) == wanted, f"unexpected effects ({context})"
    return rows
