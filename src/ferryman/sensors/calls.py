"""Calling a sensor's function: the timeout, what it may return, how a failure reads.

The engine (:mod:`ferryman.sensors.engine`) decides what gets committed; this
module only turns one call of user code into either a :class:`Prepared`
result (the runs to insert, each request checked on its own) or an error to
record.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ferryman.errors import PayloadError, RoutingError, UnknownJob
from ferryman.errors import SensorOutputError as SensorOutputError  # engine imports it here
from ferryman.logs import process_id
from ferryman.model import SensorResult
from ferryman.sensors.registry import SensorDefinition
from ferryman.store import NewRun, PushCommit
from ferryman.supervise import describe_error, supervised

SHOWN_SKIP_REASONS = 10
log = logging.getLogger("ferryman.sensors")
T = TypeVar("T")


# Errors in what a sensor returned are explained in one line; anything else
# the sensor raised is kept with its (trimmed) traceback.
OUTPUT_ERRORS = (SensorOutputError, RoutingError, UnknownJob, PayloadError)


@dataclass(slots=True)
class Called(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    timed_out: bool = False


def call_with_timeout(fn: Callable[[], T], timeout: float | None, *, name: str) -> Called[T]:
    """Call ``fn``; with a ``timeout``, on a call thread that is abandoned if late.

    Python cannot stop a thread, so a late call keeps running in the
    background; its result is dropped, never committed.
    """
    return call_each_with_timeout([fn], timeout, name=name)[0]


def call_each_with_timeout(
    fns: Sequence[Callable[[], T]], timeout: float | None, *, name: str
) -> list[Called[T]]:
    """Call each of ``fns`` in order, each within its own ``timeout``; one outcome per call.

    With a timeout the calls go to one call thread together, handed over once
    rather than once per call (the hand-over, two thread switches, cost a push
    sensor about as much as its evaluation of a message). A late call is
    abandoned (see :func:`call_with_timeout`), and the calls after it go on,
    each on time, on a fresh thread. Without one they are made here.
    """
    if timeout is None:
        return [_called(fn) for fn in fns]
    outcomes: list[Called[T]] = []
    while len(outcomes) < len(fns):
        calls = _Calls(fns[len(outcomes) :])
        thread = _CALL_THREADS.take(name)
        thread.run(calls.run)
        done = calls.wait(timeout)
        outcomes += done
        if len(done) < len(calls.fns):  # the next call is late
            thread.stop()  # once the late call returns: it is abandoned, not given back
            outcomes.append(Called(timed_out=True))
        else:
            _CALL_THREADS.give_back(name, thread)
    return outcomes


def _called(fn: Callable[[], T]) -> Called[T]:
    outcome: Called[T] = Called()
    try:
        outcome.value = fn()
    except KeyboardInterrupt:  # on the calling thread, still means stop
        raise
    except BaseException as exc:  # sys.exit() in a sensor fails its evaluation
        outcome.error = exc
    return outcome


class _Calls(Generic[T]):
    """Calls made one after another on a call thread, each timed from its own start."""

    def __init__(self, fns: Sequence[Callable[[], T]]) -> None:
        self.fns = fns
        self._outcomes: list[Called[T]] = []
        self._changed = threading.Condition()
        self._started = time.monotonic()  # of the call being made
        self._abandoned = False

    def run(self) -> None:
        for fn in self.fns:
            with self._changed:
                if self._abandoned:
                    return
                self._started = time.monotonic()
            outcome: Called[T] = Called()
            try:
                outcome.value = fn()
            except BaseException as exc:  # reported to the waiting thread, not lost
                outcome.error = exc
            with self._changed:
                if self._abandoned:  # late: its result is dropped, never committed
                    return
                self._outcomes.append(outcome)
                self._started = time.monotonic()  # the next call's time runs from here
        with self._changed:
            self._changed.notify()  # once, at the end: not a thread switch per call

    def wait(self, timeout: float) -> list[Called[T]]:
        """The outcomes in order, ending before the first call that is late."""
        with self._changed:
            while len(self._outcomes) < len(self.fns):
                left = self._started + timeout - time.monotonic()
                if left <= 0:
                    self._abandoned = True
                    break
                self._changed.wait(left)
            return list(self._outcomes)


class _CallThread:
    """A daemon thread that makes the calls it is handed, one at a time.

    Starting a thread per call cost about as much as a push sensor's whole
    evaluation of one message (100-200 µs), so threads are kept between calls.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = supervised(name, self._serve)

    def run(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def stop(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            call()


class _CallThreads:
    """Idle call threads by name; one in use belongs to its caller until given back.

    A thread whose call is late is never given back: it ends after that call,
    and the next call gets a fresh thread. A forked child has none of its
    parent's threads, so it starts with none idle.
    """

    KEPT_PER_NAME = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[_CallThread]] = {}

    def take(self, name: str) -> _CallThread:
        with self._lock:
            idle = self._idle.get(name)
            if idle:
                return idle.pop()
        return _CallThread(name)

    def stop_idle(self, deadline: float | None) -> None:
        """End the idle threads, waiting for them until ``deadline`` (monotonic)."""
        with self._lock:
            idle = [thread for threads in self._idle.values() for thread in threads]
            self._idle = {}
        for thread in idle:
            thread.stop()
        for thread in idle:
            thread.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def forget(self) -> None:
        self._lock = threading.Lock()  # a parent's thread may have held it at the fork
        self._idle = {}

    def give_back(self, name: str, thread: _CallThread) -> None:
        with self._lock:
            idle = self._idle.setdefault(name, [])
            if len(idle) < self.KEPT_PER_NAME:
                idle.append(thread)
                return
        thread.stop()


_CALL_THREADS = _CallThreads()
os.register_at_fork(after_in_child=_CALL_THREADS.forget)


def stop_idle_call_threads(deadline: float | None = None) -> None:
    """End the threads kept between sensor calls (a daemon that stops leaves none behind)."""
    _CALL_THREADS.stop_idle(deadline)


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """What a sensor asked for, ready to commit."""

    new_runs: list[NewRun]
    cursor: str | None
    skipped: int  # items the sensor saw and routed nowhere, and requests refused
    refused: list[str]  # why each refused request was refused

    @property
    def skip_reasons(self) -> str | None:
        if not self.refused:
            return None
        shown = "; ".join(self.refused[:SHOWN_SKIP_REASONS])
        more = len(self.refused) - SHOWN_SKIP_REASONS
        plural = "s" if len(self.refused) > 1 else ""
        return f"{len(self.refused)} run request{plural} skipped: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )


def skipped_count(definition: SensorDefinition, result: SensorResult) -> int:
    if not isinstance(result.skipped, int) or result.skipped < 0:
        raise SensorOutputError(
            f"sensor {definition.name!r} returned skipped={result.skipped!r}; "
            "it counts items seen but routed to no job (an int >= 0)"
        )
    return result.skipped


def describe(error: BaseException | None) -> str:
    if error is None:
        return "the sensor returned nothing"
    if isinstance(error, OUTPUT_ERRORS):
        return str(error)
    return describe_error(error)


def prepared_or_failure(
    definition: SensorDefinition, called: Called[Prepared], *, late: str
) -> Prepared | str:
    """What a sensor's call prepared, or why it failed (``late`` ends the timeout's text)."""
    if called.timed_out:
        return (
            f"sensor {definition.name!r} did not return within its timeout of "
            f"{definition.timeout}s{late}"
        )
    if called.error is not None or called.value is None:
        return describe(called.error)
    log_refused(definition.name, called.value)
    return called.value


def push_outcome(
    definition: SensorDefinition, started: float, message_id: str, called: Called[Prepared]
) -> PushCommit | str:
    """What to commit for a push sensor's call on a message, or why its delivery failed."""
    late = f" for message {shown_id(message_id)}; its late result, if any, is discarded"
    prepared = prepared_or_failure(definition, called, late=late)
    if isinstance(prepared, str):
        return prepared
    return PushCommit(
        sensor=definition.name,
        message_id=message_id,
        new_runs=prepared.new_runs,
        skipped=prepared.skipped,
        started_at=started,
        evaluator=process_id(),
        skip_reasons=prepared.skip_reasons,
    )


def shown_id(message_id: str) -> str:
    """A message id for a one-line message: quoted, and cut if very long."""
    return repr(message_id) if len(message_id) <= 200 else f"{message_id[:200]!r}..."


def log_refused(sensor: str, prepared: Prepared) -> None:
    if prepared.refused:
        log.warning("%s", prepared.skip_reasons, extra={"sensor": sensor})
