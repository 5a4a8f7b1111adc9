"""Runs by job and status for the overview and ``/metrics``, carried forward from the log.

Counting every run by job and status walks the whole ``(job, status, id)``
index, seconds at ten million runs. So the server counts once and then
carries that count forward by the processing log written since
(:mod:`ferryman.store.run_tally`): each refresh reads only the runs that
moved. The count is saved in the store now and then
(:mod:`ferryman.store.read_snapshots`), and a server that starts carries the
saved one forward instead of counting: its first count costs what the log
gained while no server ran.

A request that finds the count older than ``max_age`` carries it forward
itself when that is quick (it took less than ``SYNC_SECONDS`` last time), so
the first look after idle is current; otherwise it starts the refresh on a
thread of its own and gets the count it has, which says when it was taken.
While nobody looks, nothing is counted. ``max_age`` grows with the time a
refresh takes (ten times it, at least two seconds).

Before the first count is done (a server just started: on a store that
never saved a count, that count reads every run), a page need not wait for
it: :meth:`RunCounts.at_once` waits until that count has run ``FIRST_WAIT``
seconds at most (a small store's is done by then; a count already running
longer is a big store's, not worth waiting for), then gives the count saved
last (which says how old it is) or None, for the page to say "counting" and
fill in by its live updates.
"""

from __future__ import annotations

import logging
import threading
import time

from ferryman.app import App
from ferryman.errors import StoreError
from ferryman.store.read_model import RunCount
from ferryman.store.read_snapshots import SAVE_EVERY
from ferryman.supervise import supervised

log = logging.getLogger("ferryman.web")

MIN_AGE_SECONDS = 2.0
SYNC_SECONDS = 0.05  # a refresh this quick is done in the request that needs it
FIRST_WAIT = 0.05  # a first count that took longer is not waited for (see at_once)


class RunCounts:
    """The latest count of one App's runs by job and status (see the module)."""

    def __init__(self, app: App, *, min_age: float = MIN_AGE_SECONDS) -> None:
        self.app = app
        self.min_age = min_age
        self._lock = threading.Lock()
        self._latest: RunCount | None = None
        self._taken = float("-inf")  # time.monotonic() of the latest count
        self._took = 0.0
        self._saved = float("-inf")  # time.monotonic() of the latest save
        self._recounting = False
        # One count at a time: a request that asks while another count runs (the
        # server's first, which may read every run) waits for it instead of counting too.
        self._counting = threading.Lock()
        self._counted = threading.Event()  # set once a count is taken
        self._saved_count: RunCount | None = None
        self._saved_read = False
        self._began: float | None = None  # time.monotonic() when the latest count began

    @property
    def latest(self) -> RunCount | None:
        """The latest count taken, without counting: None before the first."""
        with self._lock:
            return self._latest

    def current(self) -> RunCount:
        with self._lock:
            latest = self._latest
            stale = time.monotonic() - self._taken >= max(self.min_age, 10 * self._took)
            quick = self._took < SYNC_SECONDS
            start = latest is not None and stale and not quick and not self._recounting
            if start:
                self._recounting = True
        if latest is None or (stale and quick):
            return self._count()
        if start:
            supervised("ferryman-web-counts", self._recount)
        return latest

    @property
    def first_under_way(self) -> bool:
        """Whether the first count is being taken now (nothing counted before it)."""
        return self.latest is None and self._counting.locked()

    def at_once(self, wait: float = FIRST_WAIT) -> RunCount | None:
        """A count to show now, never a wait for one that reads every run.

        The latest count as :meth:`current` gives it; before the first is
        done, that one if it is done within ``wait`` seconds of its start (it
        is started if nothing counts yet), else the count saved last by any
        server (its ``at`` says how old it is), else None: no count to show yet.
        """
        if self.latest is not None:
            return self.current()
        with self._lock:
            start = not self._recounting and not self._counting.locked()
            if start:
                self._recounting = True
            # A count that began ``wait`` ago and is not done reads a big store: the
            # server's first, started as it starts, is not waited for again.
            began = time.monotonic() if start or self._began is None else self._began
        left = wait - (time.monotonic() - began)
        if start:
            supervised("ferryman-web-counts", self._recount)
        if self._counted.wait(max(0.0, left)):
            return self.current()
        return self._saved_snapshot()

    def _saved_snapshot(self) -> RunCount | None:
        """The count saved in the store, read once (it only serves until the first count)."""
        with self._lock:
            if self._saved_read:
                return self._saved_count
        try:
            saved = self.app.store.saved_run_count()
        except StoreError as exc:
            log.info("could not read the saved count of runs: %s", exc)
            return None
        with self._lock:
            self._saved_count, self._saved_read = saved, True
        return saved

    def fresh(self) -> RunCount:
        """The count carried forward to now (``/metrics`` reads this)."""
        return self._count()

    def _recount(self) -> None:
        try:
            self._count()
        except StoreError:  # the next request tries again; until then, the last count stands
            log.warning("recounting runs for the overview failed", exc_info=True)
        finally:
            with self._lock:
                self._recounting = False

    def _count(self) -> RunCount:
        asked = time.monotonic()
        with self._counting:
            with self._lock:
                if self._latest is not None and self._taken >= asked:
                    return self._latest  # counted by another thread while this one waited
            return self._count_now()

    def _count_now(self) -> RunCount:
        started = time.monotonic()
        with self._lock:
            previous = self._latest
            self._began = started
        if previous is None:
            previous = self.app.store.saved_run_count()
        counted = self.app.store.count_runs(previous)
        with self._lock:
            if self._latest is None or counted.at >= self._latest.at:
                self._latest = counted
                self._taken = started
                self._took = time.monotonic() - started
                self._counted.set()
            save = started - self._saved >= SAVE_EVERY
            if save:
                self._saved = started
        if save:
            self._save(counted)
        return counted

    def _save(self, counted: RunCount) -> None:
        try:
            self.app.store.save_run_count(counted)
        except StoreError as exc:  # a store the server may only read: it counts at each start
            log.info("could not save the count of runs: %s", exc)
