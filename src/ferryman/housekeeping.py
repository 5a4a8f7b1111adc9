"""The daemon's daily prune of old finished runs (``App(prune_finished_after=...)``).

Threads:

* ``ferryman-prune`` — prunes at start and then every ``every`` seconds
  (a day by default) the runs finished longer than ``finished_after`` ago,
  through :meth:`ferryman.store.Store.prune_runs` (small batches, short
  transactions: workers keep claiming). A store error is logged and the next
  prune comes at the next interval; a crash of the loop itself is counted
  (:mod:`ferryman.supervise`) and the loop restarts after a backoff. Stopped
  with the daemon; a prune cut short leaves every batch it committed done and
  the rest for the next one.

Each prune starts where the previous one in this process stopped in the
``finished_at`` index: runs finish with a later ``finished_at`` than any
cutoff already passed, so nothing is skipped, and a day's prune walks only
that day's runs instead of every pruned run again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from ferryman.errors import FerrymanError
from ferryman.model import Backoff
from ferryman.store import Store
from ferryman.store.prune import Position
from ferryman.supervise import Supervised, supervised

log = logging.getLogger("ferryman.prune")

DAY = 24 * 3600.0
CRASH_BACKOFF = Backoff(base=1.0, factor=2.0, max=300.0)


class DailyPrune:
    """Prunes finished runs older than ``finished_after`` every ``every`` seconds."""

    def __init__(
        self, store: Callable[[], Store], finished_after: timedelta, *, every: float = DAY
    ) -> None:
        self._open_store = store
        self.finished_after = finished_after.total_seconds()
        self.every = every
        self.pruned_runs = 0
        self._last: Position | None = None
        self._stop = threading.Event()
        self._thread: Supervised = supervised(
            "ferryman-prune", self._loop, restart=CRASH_BACKOFF, stop=self._stop, start=False
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def prune_once(self) -> None:
        """One prune, from where the last one stopped; a store error is logged, not raised."""
        try:
            result = self._open_store().prune_runs(self.finished_after, after=self._last)
        except FerrymanError as exc:
            log.warning("pruning finished runs failed, trying again in %.0f s: %s", self.every, exc)
            return
        self._last = result.last
        self.pruned_runs += result.runs
        if result.runs:
            log.info(
                "pruned %d finished runs: %d processing log rows, %d payloads",
                result.runs,
                result.events,
                result.payloads,
            )

    def _loop(self) -> None:
        self.prune_once()  # at start, even when stopped at once: a short run prunes too
        while not self._stop.wait(self.every):
            self.prune_once()
