"""The sensor loop of ``ferryman run``: each due poll sensor evaluated on its own thread.

One named, supervised thread (``ferryman-sensors``) reads the schedule from
the store and starts an evaluation thread (``ferryman-sensor-eval-<name>``)
for each running sensor that is due and not already being evaluated by this
process, oldest due first, at most ``max_concurrent`` at a time. A slow
sensor therefore delays only itself; a hung one is cut off by its
``timeout`` (recorded as a failed evaluation) and frees its slot. Several
processes may run the loop against one store: the compare-and-swap on each
sensor's ``state_version`` lets exactly one evaluation per version count.

The loop also prunes the evaluation history and forgets old push
deliveries now and then. An evaluation that crashes before even its failure
could be recorded keeps its sensor's slot for the sensor's backoff, so it is
never retried in a tight loop. If the loop itself crashes it is logged with
its traceback, counted where ``ferryman status`` shows it
(:mod:`ferryman.supervise`) and restarted after a growing delay; a store
that cannot be reached is retried the same way, but probed every second
meanwhile, so the sensors resume as soon as it answers again rather than at
the end of a delay that grew while it was away. That delay is the loop's
own: a sensor whose function fails backs off by its own ``backoff``,
recorded in the store, whatever the loop does.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable

from ferryman.errors import ConfigurationError, StoreError, StoreUnavailable
from ferryman.model import Backoff
from ferryman.sensors.calls import stop_idle_call_threads
from ferryman.sensors.engine import SensorEngine
from ferryman.sensors.registry import SensorDefinition
from ferryman.store.sensors import RUNNING
from ferryman.supervise import Supervised, supervised
from ferryman.worker.signals import on_stop_signals
from ferryman.worker.worker import WorkReport

log = logging.getLogger("ferryman.sensors")

IDLE_WAIT = 1.0  # how often the schedule is re-read for changes made elsewhere
PRUNE_EVERY = 600.0
RESTART_MAX_DELAY = 30.0
MIN_CRASH_DELAY = 1.0  # even with a zero backoff, an evaluation that crashed waits this long
CRASH_BACKOFF = Backoff(base=1.0, factor=2.0, max=RESTART_MAX_DELAY)
STORE_BACKOFF = Backoff(base=0.2, factor=2.0, max=RESTART_MAX_DELAY)
# An evaluation that could not be recorded (the store refuses writes): 0.4 s, 0.8 s ...
RECORD_BACKOFF = Backoff(base=0.4, factor=2.0, max=RESTART_MAX_DELAY, jitter=0.0)
PROBE_EVERY = 1.0  # while the store is away: how often to ask whether it is back
PROBE_TIMEOUT = 2.0


class SensorDaemon:
    """The supervised sensor loop. ``start()``, then ``stop()`` and ``join()``."""

    def __init__(
        self,
        engine: SensorEngine,
        *,
        max_concurrent: int = 8,
        keep_last: int | None = None,
        idle_wait: float = IDLE_WAIT,
        prune_every: float = PRUNE_EVERY,
    ) -> None:
        if max_concurrent < 1:
            raise ConfigurationError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self.engine = engine
        self.max_concurrent = max_concurrent
        self.keep_last = keep_last
        self.idle_wait = idle_wait
        self.prune_every = prune_every
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight: dict[str, threading.Thread] = {}
        self._thread: Supervised | None = None
        self._next_prune = 0.0
        # Per sensor, evaluations in a row that crashed before recording anything;
        # each sensor's key is touched only by its own evaluation thread.
        self._crashed_in_a_row: dict[str, int] = {}

    # -- control -------------------------------------------------------------

    def start(self) -> None:
        # Safe to restart: the loop keeps nothing but the schedule, read again each round.
        self._thread = supervised(
            "ferryman-sensors", self._loop, restart=CRASH_BACKOFF, stop=self._stopping
        )

    def stop(self) -> None:
        """Start no new evaluation; those under way finish (or time out) on their own."""
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop and the evaluations under way; True if all ended in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        threads = [self._thread.thread] if self._thread is not None else []
        with self._lock:
            threads += list(self._in_flight.values())
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stop_idle_call_threads(deadline)
        return not any(thread.is_alive() for thread in threads)

    @property
    def crashes(self) -> int:
        """Crashes of the loop itself so far (each logged, and shown by ``ferryman status``)."""
        return self._thread.crashes if self._thread is not None else 0

    @property
    def in_flight(self) -> list[str]:
        with self._lock:
            return sorted(self._in_flight)

    # -- loop ----------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self._round()
                failures = 0
            except StoreError as exc:
                failures += 1
                delay = STORE_BACKOFF.delay(failures, "sensor loop")
                log.warning("sensor loop: store failed, retrying in %.1fs: %s", delay, exc)
                self._back_off(delay, probe=isinstance(exc, StoreUnavailable))
                continue
            self._wake.wait(wait)

    def _back_off(self, delay: float, *, probe: bool) -> None:
        """Wait ``delay``; with ``probe``, only until the store answers again."""
        deadline = time.monotonic() + delay
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.wait(min(left, PROBE_EVERY) if probe else left):
                return
            if probe and self.engine.store.ping(PROBE_TIMEOUT):
                log.info("sensor loop: the store answers again, resuming")
                return

    def _round(self) -> float:
        """Start what is due; return how long to wait before looking again."""
        # Push-only apps are pruned too: they have deliveries to forget.
        self._maybe_prune()
        definitions = {d.name: d for d in self.engine.poll_definitions()}
        if not definitions:
            return self.idle_wait
        self.engine.ensure(list(definitions.values()))
        now, entries = self.engine.store.sensor_schedule(sorted(definitions))
        wait = self.idle_wait
        due: list[tuple[float, str]] = []
        busy = set(self.in_flight)
        for entry in entries:
            if entry.status != RUNNING or entry.name in busy:
                continue
            if entry.due(now):
                due.append((entry.next_evaluation_at or 0.0, entry.name))
            elif entry.next_evaluation_at is not None:
                wait = min(wait, entry.next_evaluation_at - now)
        for _, name in sorted(due):  # the longest-waiting sensor first
            if self._stopping.is_set():
                break
            with self._lock:
                if len(self._in_flight) >= self.max_concurrent:
                    break
                evaluation = supervised(
                    f"ferryman-sensor-eval-{name}",
                    functools.partial(self._evaluate, definitions[name]),
                    start=False,
                )
                self._in_flight[name] = evaluation.thread
            evaluation.start()
        return max(wait, 0.0)

    def _evaluate(self, definition: SensorDefinition) -> None:
        # Whatever escapes the engine means not even a failed evaluation was
        # recorded, so the sensor's schedule did not move: its slot is held for
        # a while, or it would be due again at once and fail in a loop.
        fields = {"sensor": definition.name}
        try:
            self.engine.evaluate(definition)
            self._crashed_in_a_row.pop(definition.name, None)
        except StoreError as exc:  # the store answers reads but refuses writes
            crashes = self._count_crash(definition.name)
            delay = RECORD_BACKOFF.delay(crashes, definition.name)
            log.warning(
                "evaluation could not be recorded, next try in %.1fs: %s", delay, exc, extra=fields
            )
            self._stopping.wait(delay)
        except Exception:
            crashes = self._count_crash(definition.name)
            delay = max(MIN_CRASH_DELAY, definition.backoff.delay(crashes, key=definition.name))
            log.exception(
                "evaluation crashed (%d in a row); next try in %.1fs", crashes, delay, extra=fields
            )
            self._stopping.wait(delay)
        finally:
            with self._lock:
                self._in_flight.pop(definition.name, None)
            self._wake.set()

    def _count_crash(self, name: str) -> int:
        crashes = self._crashed_in_a_row.get(name, 0) + 1
        self._crashed_in_a_row[name] = crashes
        return crashes

    def _maybe_prune(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.prune_every
        self.engine.prune(self.keep_last)


def run_daemon(
    daemon: SensorDaemon,
    work: Callable[[], WorkReport] | None,
    *,
    grace_seconds: float,
) -> WorkReport:
    """Run the sensor loop beside ``work`` (the worker, on this thread) until stopped.

    The worker handles SIGTERM and SIGINT: it drains and returns, then the
    sensor loop is stopped and given ``grace_seconds`` for evaluations under
    way (whatever they have not committed is simply not committed). Without
    a worker, the signals stop the sensor loop directly.
    """
    daemon.start()
    try:
        if work is not None:
            return work()
        _wait_for_signal(daemon)
        return WorkReport()
    finally:
        daemon.stop()
        if not daemon.join(grace_seconds):
            log.warning("sensor evaluations still running at exit: %s", ", ".join(daemon.in_flight))


def _wait_for_signal(daemon: SensorDaemon) -> None:
    stop = threading.Event()
    restore = on_stop_signals(stop.set, "stopping the sensor loop")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        if restore is not None:
            restore()
