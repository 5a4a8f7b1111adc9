"""How many runs a worker holds: one per job slot, plus a prefetch sized by run time.

A worker claims runs ahead of its free job slots so that claims come in
batches: a claim transaction per run would cost more than a short run
itself. But a run held here waits for a slot while another worker may sit
idle, so with long runs a worker should hold no more than it can start.

With ``prefetch=None`` (the default) the worker measures how long its
attempts take and holds, beyond one run per slot, only what its slots get
through in :data:`AHEAD_SECONDS`::

    prefetch = floor(slots * AHEAD_SECONDS / run time)    at most MAX_PREFETCH

Run time is a moving average of attempts' durations, and never less than the
age of the oldest attempt still running, so a worker that meets long runs
after short ones stops claiming ahead at once, without waiting for one of them
to end. Before the first attempt has ended nothing is known and nothing is
claimed ahead: a worker that starts on long runs takes one per slot, and
several workers share them evenly. What was measured is forgotten once the
worker has run nothing for :data:`FORGET_AFTER` seconds, so a burst of long
runs after a pause is shared as evenly as on a fresh start. Short runs grow the prefetch up to
:data:`MAX_PREFETCH` within a few claims; runs of ``AHEAD_SECONDS * slots``
or longer shrink it to 0. A fixed ``prefetch`` (0 or more) turns this off.

The size of one claim is ``min(room, claim_batch)``: it grows and shrinks
with the room the prefetch leaves.

The methods are called from several threads without a lock: the attempt
start times live in a dict (whose single operations are atomic), and a
moving-average update lost to a race costs nothing but a sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# Work claimed ahead of the job slots, in seconds of their measured run time:
# the longest a run waits here for a slot because of the prefetch.
AHEAD_SECONDS = 0.5
MAX_PREFETCH = 4000  # runs held ahead at most, however short they are
MAX_CLAIM = 1000  # runs per claim transaction, by default
SMOOTHING = 0.2  # weight of the newest attempt's duration in the average
FORGET_AFTER = 1.0  # seconds without a running attempt after which run time is unknown


class Pacer:
    """The number of runs a worker may hold, from its slots and how long runs take."""

    def __init__(
        self, slots: int, prefetch: int | None, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.slots = slots
        self.fixed = None if prefetch is None else max(prefetch, 0)
        self._clock = clock
        self._average: float | None = None  # seconds per attempt
        self._last_end = 0.0
        self._started: dict[int, float] = {}  # run id -> when its attempt began

    def started(self, run_id: int) -> None:
        self._started[run_id] = self._clock()

    def ended(self, run_id: int) -> None:
        began = self._started.pop(run_id, None)
        if began is None or self.fixed is not None:
            return
        self._last_end = now = self._clock()
        average = self._average
        took = now - began
        self._average = took if average is None else average + SMOOTHING * (took - average)

    def run_time(self) -> float | None:
        """The expected duration of an attempt; None: not known (yet, or any more)."""
        average = self._average
        if average is None:
            return None
        now = self._clock()
        oldest = min(tuple(self._started.values()), default=None)
        if oldest is None:
            if now - self._last_end > FORGET_AFTER:
                self._average = None  # idle: the next runs may be another kind
                return None
            return average
        return max(average, now - oldest)

    def prefetch(self) -> int:
        """Runs to hold beyond one per slot, now."""
        if self.fixed is not None:
            return self.fixed
        run_time = self.run_time()
        if run_time is None:
            return 0
        ahead = self.slots * AHEAD_SECONDS / max(run_time, 1e-6)
        return min(MAX_PREFETCH, math.floor(ahead))

    def capacity(self) -> int:
        """Runs the worker may hold, now."""
        return self.slots + self.prefetch()
