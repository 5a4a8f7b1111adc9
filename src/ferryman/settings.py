"""Checks of numeric settings, made where they are given, before anything runs.

A NaN compares false with everything, so ``lease_seconds <= 0`` lets it
through, and an infinite delay or lease overflows the clock arithmetic later:
each setting is checked to be a finite number (or a whole one) in its range,
and a wrong one is a :class:`~ferryman.ConfigurationError` that names it.
"""

from __future__ import annotations

import math
import operator
from numbers import Real
from typing import SupportsIndex

from ferryman.errors import ConfigurationError


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
