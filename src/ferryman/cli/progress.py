"""How far ``ferryman work`` has got: a live Rich view on a terminal, a log line otherwise.

Progress is read from the store, not from the worker's own counters, so it is
the same with threads, with ``--processes`` (whose children count in other
processes) and with several ``ferryman work`` instances on one queue: *done*
and *failed* are runs of the served jobs that finished since this command
started, *to go* the runs still queued or running. The rate is measured over
the last :data:`RATE_WINDOW` seconds and the ETA is what is left at that rate.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ferryman.errors import StoreError
from ferryman.model import RunStatus
from ferryman.supervise import Supervised, supervised

if TYPE_CHECKING:
    from ferryman.app import App

log = logging.getLogger("ferryman.worker")

RATE_WINDOW = 15.0  # seconds of samples the rate is measured over
FINISHED_OK = (RunStatus.SUCCEEDED,)
FINISHED_BAD = (RunStatus.FAILED, RunStatus.DEAD)
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Run counts of the served jobs at one moment."""

    at: float
    succeeded: int
    failed: int
    to_go: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """What the view shows: counts since the start, rate and ETA."""

    succeeded: int
    failed: int
    to_go: int
    rate: float | None  # runs per second
    eta: float | None  # seconds

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


class ProgressTracker:
    """Turns snapshots of the store's counts into :class:`Figures`."""

    def __init__(self, first: Snapshot) -> None:
        self._first = first
        self._samples: collections.deque[Snapshot] = collections.deque([first])

    def add(self, snapshot: Snapshot) -> Figures:
        self._samples.append(snapshot)
        while len(self._samples) > 2 and snapshot.at - self._samples[1].at >= RATE_WINDOW:
            self._samples.popleft()
        oldest = self._samples[0]
        elapsed = snapshot.at - oldest.at
        finished = (snapshot.succeeded + snapshot.failed) - (oldest.succeeded + oldest.failed)
        rate = finished / elapsed if elapsed > 0 and finished >= 0 else None
        eta = snapshot.to_go / rate if rate else None
        return Figures(
            succeeded=snapshot.succeeded - self._first.succeeded,
            failed=snapshot.failed - self._first.failed,
            to_go=snapshot.to_go,
            rate=rate,
            eta=eta,
        )


def take_snapshot(app: App, jobs: Sequence[str]) -> Snapshot:
    served = set(jobs)
    succeeded = failed = to_go = 0
    for summary in app.status():
        if summary.job not in served:
            continue
        counts = summary.counts
        succeeded += sum(counts.get(status, 0) for status in FINISHED_OK)
        failed += sum(counts.get(status, 0) for status in FINISHED_BAD)
        to_go += sum(counts.get(status, 0) for status in UNFINISHED)
    return Snapshot(at=time.monotonic(), succeeded=succeeded, failed=failed, to_go=to_go)


def _eta_text(figures: Figures) -> str:
    if figures.to_go == 0:
        return "-"
    if figures.eta is None:
        return "?"
    minutes, seconds = divmod(int(figures.eta), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class WorkProgress:
    """Polls the store every ``interval`` seconds on a thread of its own.

    With ``live``, renders a bar on ``console`` (done of done + to go,
    succeeded, failed, rate, ETA); otherwise logs one line per ``interval``.
    Start it once the workers run (:meth:`start`), stop it when they return.
    """

    def __init__(
        self,
        app: App,
        jobs: Sequence[str],
        console: Console,
        *,
        live: bool,
        interval: float,
    ) -> None:
        self._app = app
        self._jobs = list(jobs)
        self._live = live
        self._interval = interval
        self._stop = threading.Event()
        self._thread: Supervised | None = None
        self._tracker: ProgressTracker | None = None
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[succeeded]} succeeded"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            auto_refresh=False,
        )
        self._task = self._progress.add_task(
            ", ".join(self._jobs), total=None, succeeded=0, failed=0, rate="- runs/s", eta="?"
        )

    def start(self) -> None:
        self._tracker = ProgressTracker(take_snapshot(self._app, self._jobs))
        if self._live:
            self._progress.start()
        self._thread = supervised("ferryman-progress", self._poll)

    def stop(self) -> None:
        """Stop polling; a live view is refreshed one last time and left on screen."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._update()
        if self._live:
            self._progress.stop()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                figures = self._update()
            except StoreError as exc:  # a store hiccup must not stop the workers
                log.warning("progress: could not read run counts: %s", exc)
                continue
            if not self._live:
                log.info(
                    "progress: %d succeeded, %d failed, %d to go, %s, ETA %s",
                    figures.succeeded,
                    figures.failed,
                    figures.to_go,
                    _rate_text(figures),
                    _eta_text(figures),
                )

    def _update(self) -> Figures:
        assert self._tracker is not None
        figures = self._tracker.add(take_snapshot(self._app, self._jobs))
        self._progress.update(
            self._task,
            completed=figures.done,
            total=figures.done + figures.to_go,
            succeeded=figures.succeeded,
            failed=figures.failed,
            rate=_rate_text(figures),
            eta=_eta_text(figures),
        )
        if self._live:
            self._progress.refresh()
        return figures


def _rate_text(figures: Figures) -> str:
    return "- runs/s" if figures.rate is None else f"{figures.rate:,.1f} runs/s"
