"""The queue history's oldest due age at each moment, against the definition itself."""

from __future__ import annotations

import math
import random

import pytest

from ferryman.store import history


def _by_definition(waits: list[tuple[float, float]], moment: float) -> float | None:
    due = [start for start, end in waits if start <= moment < end]
    return moment - min(due) if due else None


@pytest.mark.parametrize("seed", range(200))
def test_the_sweep_finds_the_earliest_wait_going_on_at_every_moment(seed: int) -> None:
    rng = random.Random(seed)
    waits = []
    for _ in range(rng.randrange(0, 60)):
        start = float(rng.randrange(0, 100))
        end = math.inf if rng.random() < 0.1 else start + rng.choice([0, 1, 5, 30, 200])
        waits.append((start, end))
    moments = sorted(float(rng.randrange(-5, 120)) for _ in range(rng.randrange(1, 40)))
    ages = history._oldest_due_ages(waits, moments)
    assert ages == {moment: _by_definition(waits, moment) for moment in moments}
