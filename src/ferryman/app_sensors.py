"""The App's methods for the sensors it registered: evaluate, deliver, read, operate.

:class:`SensorOperations` is mixed into :class:`~ferryman.App`; registering
a sensor (``App.poll_sensor``, ``push_sensor``, ``schedule``) stays beside
``App.job`` in ``app.py``. Each method hands over to the
:class:`~ferryman.sensors.engine.SensorEngine`, which checks the sensor's
name and talks to the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ferryman.model import Evaluation, SensorState
from ferryman.sensors.engine import SensorEngine
from ferryman.sources.base import Source
from ferryman.sources.consumer import SourceConsumers, SourceStats

__all__ = ["SensorOperations"]


class SensorOperations:
    """Evaluating, delivering to, reading and operating the App's sensors."""

    evaluation_retention: int | None
    _sensor_engine: SensorEngine
    _sources: dict[str, Source]
    _consumers: SourceConsumers | None

    def tick(
        self, sensors: Sequence[str] | None = None, *, force: bool = False
    ) -> list[Evaluation]:
        """Evaluate every due poll sensor once (or the named ones; ``force``: even if not due).

        Paused sensors are skipped. Returns the evaluations recorded, in
        sensor-name order: ``ok``, ``failed`` or ``conflict``.
        """
        return self._sensor_engine.tick(sensors, force=force)

    def ingest(self, sensor: str, message_id: str, payload: Any = None) -> Evaluation:
        """Deliver a message to a push sensor, exactly once per ``(sensor, message_id)``.

        The runs it requests, its evaluation and its delivery commit together;
        the delivery is unique by sensor and message id (of any length), so a
        redelivery within ``delivery_retention``, even a concurrent one from
        another process, writes nothing and returns the first evaluation. A
        failed evaluation records no delivery, so delivering the message again
        retries it. A message id that cannot be stored exactly (NUL, a lone
        surrogate) is refused with :class:`~ferryman.PayloadError`. If the
        store fails, :class:`~ferryman.StoreError` is raised and nothing was
        recorded: acknowledge a message only once ``ingest`` has returned an
        ``ok`` evaluation.
        """
        return self._sensor_engine.ingest(sensor, message_id, payload)

    def deliver(self, sensor: str, message_id: str, payload: Any = None) -> tuple[Evaluation, bool]:
        """:meth:`ingest`, also saying whether this call recorded the evaluation.

        ``False``: the message had been delivered before (perhaps by a
        concurrent call, in any process) and the first evaluation is returned.
        The HTTP ingest endpoint answers 201 or 200 from it.
        """
        return self._sensor_engine.deliver(sensor, message_id, payload)

    def get_sensor(self, name: str) -> SensorState:
        """The sensor's durable state: cursor, state_version, status, failures, schedule."""
        return self._sensor_engine.get_sensor(name)

    def sensors(self) -> list[SensorState]:
        """Every sensor in the store and every registered one, by name."""
        return self._sensor_engine.sensors()

    def get_evaluations(self, name: str, limit: int | None = None) -> list[Evaluation]:
        """The sensor's evaluation history, oldest first; with ``limit``, the newest ``limit``."""
        return self._sensor_engine.get_evaluations(name, limit)

    def pause_sensor(self, name: str) -> SensorState:
        """Stop evaluating the sensor (everywhere) until :meth:`resume_sensor`."""
        return self._sensor_engine.set_status(name, paused=True)

    def resume_sensor(self, name: str) -> SensorState:
        """Evaluate the sensor again, starting at once."""
        return self._sensor_engine.set_status(name, paused=False)

    def set_cursor(self, name: str, value: str | None, *, by: str | None = None) -> Evaluation:
        """Move the sensor's cursor: a ``manual`` evaluation recording ``by``, swapped like any.

        Any evaluation under way when it commits loses its race and writes nothing.
        """
        return self._sensor_engine.set_cursor(name, value, by=by)

    def prune_evaluations(self, keep_last: int | None = None) -> int:
        """Delete all but the newest ``keep_last`` (default ``evaluation_retention``)
        evaluations of each sensor; return how many were deleted.

        Push deliveries older than ``delivery_retention`` are forgotten first;
        the evaluation of a delivery still remembered is kept.
        """
        keep = self.evaluation_retention if keep_last is None else keep_last
        return self._sensor_engine.prune(keep)

    def prune_deliveries(self) -> int:
        """Forget push deliveries older than ``delivery_retention``; return how many.

        A message delivered again after that is evaluated again; its runs are
        still deduplicated by run_key.
        """
        return self._sensor_engine.prune_deliveries()

    def source_stats(self) -> dict[str, SourceStats]:
        """What each broker source consumer of this process did, by push sensor.

        Empty unless :meth:`~ferryman.App.run` is running (or ran) in this process.
        """
        consumers = self._consumers
        if consumers is None:
            return {}
        return {consumer.sensor: consumer.stats for consumer in consumers.consumers}

    @property
    def sources(self) -> dict[str, Source]:
        """The broker sources of the push sensors, by sensor name."""
        return dict(self._sources)
