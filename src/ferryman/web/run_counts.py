"""Runs by job and status for the overview, recounted in the background.

Counting runs by job and status is the one read on the overview whose cost
grows with the store: it walks the whole ``(job, status, id)`` index, about
a tenth of a second per million runs. Every other part of the overview is
an index seek. So the server keeps the latest count and serves it at once,
saying when it was taken; a request that finds it older than ``max_age``
starts a recount on a thread of its own and still gets the count it has.
Only the very first count is waited for, and the server takes it before it
answers any request (:func:`ferryman.web.serving.warm_up`). While nobody
looks, nothing is counted.

``max_age`` grows with the time a count takes (ten times it, at least two
seconds), so a huge store is recounted less often rather than kept busy.
"""

from __future__ import annotations

import logging
import threading
import time

from ferryman.app import App
from ferryman.errors import StoreError
from ferryman.store.read_model import RunCount
from ferryman.supervise import supervised

log = logging.getLogger("ferryman.web")

MIN_AGE_SECONDS = 2.0


class RunCounts:
    """The latest count of one App's runs by job and status (see the module)."""

    def __init__(self, app: App, *, min_age: float = MIN_AGE_SECONDS) -> None:
        self.app = app
        self.min_age = min_age
        self._lock = threading.Lock()
        self._latest: RunCount | None = None
        self._taken = float("-inf")  # time.monotonic() of the latest count
        self._took = 0.0
        self._recounting = False

    @property
    def latest(self) -> RunCount | None:
        """The latest count taken, without counting: None before the first."""
        with self._lock:
            return self._latest

    def current(self) -> RunCount:
        with self._lock:
            latest = self._latest
            stale = time.monotonic() - self._taken >= max(self.min_age, 10 * self._took)
            start = latest is not None and stale and not self._recounting
            if start:
                self._recounting = True
        if latest is None:
            return self._count()
        if start:
            supervised("ferryman-web-counts", self._recount)
        return latest

    def _recount(self) -> None:
        try:
            self._count()
        except StoreError:  # the next request tries again; until then, the last count stands
            log.warning("recounting runs for the overview failed", exc_info=True)
        finally:
            with self._lock:
                self._recounting = False

    def _count(self) -> RunCount:
        started = time.monotonic()
        counted = self.app.store.count_runs()
        with self._lock:
            if self._latest is None or counted.at >= self._latest.at:
                self._latest = counted
                self._taken = started
                self._took = time.monotonic() - started
        return counted
