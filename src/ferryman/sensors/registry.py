"""Sensor definitions: what ``@app.poll_sensor`` and ``@app.push_sensor`` register."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ferryman import settings
from ferryman.errors import ConfigurationError
from ferryman.model import Backoff, RunRequest
from ferryman.sensors.context import SensorContext

SensorFunction = Callable[[SensorContext, Any], Any]

DEFAULT_POLL_TIMEOUT = 300.0
DEFAULT_PUSH_TIMEOUT = 60.0


class SensorKind(enum.StrEnum):
    POLL = "poll"
    PUSH = "push"


class RoutingError(ValueError):
    """A run request names a job its sensor may not send to."""


@dataclass(frozen=True, slots=True)
class SensorDefinition:
    """A registered sensor: its function, where its runs go, and how it is scheduled."""

    name: str
    kind: SensorKind
    fn: SensorFunction
    job: str | None  # where a RunRequest without ``job`` goes
    jobs: tuple[str, ...]  # every job a RunRequest may name (``job`` included)
    interval: float  # poll sensors: seconds between successful evaluations
    backoff: Backoff  # poll sensors: delay after consecutive failures
    timeout: float | None  # seconds the function may run before the evaluation fails
    # poll sensors that know when they are next needed (schedules): seconds from
    # the evaluation's start (the store's clock) to then, given the new cursor
    until_next: Callable[[str | None, float], float | None] | None = None

    def next_delay(self, cursor: str | None, started: float) -> float:
        """Seconds until the next evaluation after a success: ``interval``, or less if
        ``until_next`` says the sensor is needed sooner (never below zero)."""
        sooner = None if self.until_next is None else self.until_next(cursor, started)
        return self.interval if sooner is None else max(0.0, min(self.interval, sooner))

    def route(self, request: RunRequest) -> str:
        """The job ``request`` goes to, or :class:`RoutingError`."""
        job = request.job or self.job
        if job is None:
            raise RoutingError(
                f"sensor {self.name!r} has no default job and run_key {request.run_key!r} "
                f"names none; set RunRequest.job to one of {list(self.jobs)}"
            )
        if job not in self.jobs:
            raise RoutingError(
                f"sensor {self.name!r} routed run_key {request.run_key!r} to job {job!r}, "
                f"which is not among its jobs {list(self.jobs)}"
            )
        return job


def define_sensor(
    fn: SensorFunction,
    *,
    kind: SensorKind,
    name: str | None,
    job: str | None,
    jobs: Sequence[str] | None,
    interval: float = 0.0,
    backoff: Backoff,
    timeout: float | None,
) -> SensorDefinition:
    """Check a registration and build its definition; errors are :class:`ConfigurationError`."""
    sensor_name = name or getattr(fn, "__name__", None)
    if not sensor_name or not isinstance(sensor_name, str):
        raise ConfigurationError("a sensor needs a name: pass name=...")
    if isinstance(jobs, str):
        raise ConfigurationError(f"sensor {sensor_name!r}: jobs= is a list of job names")
    allowed = tuple(dict.fromkeys([*([job] if job else []), *(jobs or ())]))
    if not allowed:
        raise ConfigurationError(
            f"sensor {sensor_name!r} sends runs nowhere: give job= (and/or jobs= for routing)"
        )
    if kind is SensorKind.POLL:
        settings.seconds(f"sensor {sensor_name!r}: interval", interval)
    if timeout is not None:
        settings.seconds(f"sensor {sensor_name!r}: timeout", timeout, inclusive=False)
    if not isinstance(backoff, Backoff):
        raise ConfigurationError(
            f"sensor {sensor_name!r}: backoff must be a ferryman.Backoff, got {backoff!r}"
        )
    if not callable(fn):
        raise ConfigurationError(f"sensor {sensor_name!r}: {fn!r} is not callable")
    return SensorDefinition(
        name=sensor_name,
        kind=kind,
        fn=fn,
        job=job,
        jobs=allowed,
        interval=float(interval),
        backoff=backoff,
        timeout=timeout,
    )
