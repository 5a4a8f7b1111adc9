"""Calling a sensor's function: the timeout, what it may return, how a failure reads.

The engine (:mod:`ferryman.sensors.engine`) decides what gets committed; this
module only turns one call of user code into either a :class:`Prepared`
result (the runs to insert, each request checked on its own) or an error to
record.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ferryman.errors import PayloadError, RoutingError, UnknownJob
from ferryman.errors import SensorOutputError as SensorOutputError  # engine imports it here
from ferryman.model import SensorResult
from ferryman.sensors.registry import SensorDefinition
from ferryman.store import NewRun
from ferryman.supervise import describe_error, supervised

SHOWN_SKIP_REASONS = 10
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
    """Call ``fn``; with a ``timeout``, on a thread of its own that is abandoned if late.

    Python cannot stop a thread, so a late call keeps running in the
    background; its result is dropped, never committed.
    """
    outcome: Called[T] = Called()
    if timeout is None:
        try:
            outcome.value = fn()
        except KeyboardInterrupt:  # still means stop
            raise
        except BaseException as exc:  # sys.exit() in a sensor fails its evaluation
            outcome.error = exc
        return outcome
    done = threading.Event()

    def target() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:  # reported to the evaluating thread, not lost
            outcome.error = exc
        finally:
            done.set()

    supervised(name, target)
    if not done.wait(timeout):
        return Called(timed_out=True)
    return outcome


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
