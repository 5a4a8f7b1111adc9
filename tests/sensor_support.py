"""Helpers for evaluating the built-in sensors directly, the way the engine does."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import ferryman as fm
from ferryman.sensors.context import SensorContext

SensorFn = Callable[[SensorContext, str | None], fm.SensorResult]


class Clock:
    """A clock the test moves by hand: sensors take ``clock=`` so no test sleeps."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def context(sensor: str = "sensor", job: str | None = "load") -> SensorContext:
    adapter = logging.LoggerAdapter(logging.getLogger("ferryman.sensor"), {"sensor": sensor})
    return SensorContext(
        sensor=sensor, evaluation_started_at=datetime.now(UTC), job=job, logger=adapter
    )


class Driver:
    """Evaluates a sensor and feeds its cursor back, as the engine would after a commit."""

    def __init__(self, sensor: SensorFn, job: str | None = "load") -> None:
        self.sensor = sensor
        self.ctx = context(getattr(sensor, "__name__", "sensor"), job)
        self.cursor: str | None = None
        self.results: list[fm.SensorResult] = []

    def evaluate(self) -> fm.SensorResult:
        result = self.sensor(self.ctx, self.cursor)
        if result.cursor is not None:
            self.cursor = result.cursor
        self.results.append(result)
        return result

    def keys(self) -> list[str]:
        """Evaluate once; the run keys requested, in order."""
        return [request.run_key for request in self.evaluate().run_requests]

    def cursor_document(self) -> dict[str, Any]:
        assert self.cursor is not None
        document: dict[str, Any] = json.loads(self.cursor)
        return document
