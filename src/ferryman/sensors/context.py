"""What a sensor sees while it is evaluated."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorContext:
    """Handed to a sensor function on each evaluation.

    ``sensor`` is the sensor's registered name; ``evaluation_started_at`` is
    when this evaluation began (UTC, the store's clock); ``state_version`` is
    the version of the sensor's state the evaluation read — its result
    commits only if that version is still current. ``job`` is the job a
    :class:`~ferryman.RunRequest` without a ``job`` goes to; ``jobs`` every
    job the sensor may route to. ``logger`` carries the sensor's name in
    every record.
    """

    sensor: str
    evaluation_started_at: datetime
    state_version: int = 0
    job: str | None = None
    jobs: tuple[str, ...] = ()
    logger: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.LoggerAdapter(logging.getLogger("ferryman.sensor"))
    )
