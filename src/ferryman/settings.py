"""Checks of numeric settings, made where they are given, before anything runs.

A NaN compares false with everything, so ``lease_seconds <= 0`` lets it
through, and an infinite delay or lease overflows the clock arithmetic later:
each setting is checked to be a finite number (or a whole one) in its range,
and a wrong one is a :class:`~ferryman.ConfigurationError` that names it.
"""

from __future__ import annotations

import math
import operator
from datetime import timedelta
from numbers import Real
from typing import Any, SupportsIndex

from ferryman.errors import ConfigurationError

# The store of the CLI and of ``fm.App()`` when none is named; here, away from
# the store's modules, so that the CLI names it without importing SQLAlchemy.
DEFAULT_STORE = "sqlite:///ferryman.db"


def seconds(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` unless ``inclusive``)."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"{name} must be a number {bound}, got {value!r}")
    number = float(value)
    in_range = number >= minimum if inclusive else number > minimum
    if not (math.isfinite(number) and in_range):
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def count(name: str, value: object, *, minimum: int) -> int:
    """``value`` as a whole number ``>= minimum``."""
    if isinstance(value, SupportsIndex) and not isinstance(value, bool):
        number = operator.index(value)
        if number >= minimum:
            return number
    raise ConfigurationError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def retention(
    value: timedelta | float | None, *, name: str = "delivery_retention"
) -> timedelta | None:
    """A retention setting as a timedelta, or ConfigurationError naming it."""
    if value is None:
        return None
    total = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(total, int | float) or not math.isfinite(total) or total < 0:
        raise ConfigurationError(f"{name} must be a finite duration >= 0 (or None), got {value!r}")
    return value if isinstance(value, timedelta) else timedelta(seconds=total)


def work_settings(
    *,
    concurrency: int,
    prefetch: int | None,
    grace_seconds: float,
    processes: int | None = None,
    claim_batch: int | None = None,
    poll_interval: float | None = None,
) -> None:
    """Refuse a worker setting out of range (NaN and infinities included), naming it.

    ``None`` is the default of the optional ones, and always fine.
    """
    count("concurrency", concurrency, minimum=1)
    seconds("grace_seconds", grace_seconds)
    if prefetch is not None:
        count("prefetch", prefetch, minimum=0)
    if processes is not None:
        count("processes", processes, minimum=1)
    if claim_batch is not None:
        count("claim_batch", claim_batch, minimum=1)
    if poll_interval is not None:
        seconds("poll_interval", poll_interval, inclusive=False)


def queue_controls(
    priority: object, concurrency: object, key_concurrency: object, rate: object
) -> dict[str, Any]:
    """A job's queue controls (see ``App.job``), checked; ConfigurationError naming a wrong one."""
    from ferryman.model import PRIORITY_BOUND, Rate

    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"priority must be an int, got {priority!r}")
    if not -PRIORITY_BOUND <= priority <= PRIORITY_BOUND:
        raise ConfigurationError(
            f"priority must be between {-PRIORITY_BOUND} and {PRIORITY_BOUND}, got {priority!r}"
        )
    if concurrency is not None:
        count("concurrency", concurrency, minimum=1)
    count("key_concurrency", key_concurrency, minimum=1)
    if rate is not None and not isinstance(rate, Rate):
        raise ConfigurationError(f"rate must be a ferryman.Rate, got {rate!r}")
    return {
        "priority": priority,
        "concurrency": concurrency,
        "key_concurrency": key_concurrency,
        "rate": rate,
    }
