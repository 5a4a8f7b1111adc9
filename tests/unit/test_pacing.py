"""The worker's prefetch at the defaults, from measured run times (a fake clock)."""

from __future__ import annotations

from ferryman.worker.pacing import AHEAD_SECONDS, FORGET_AFTER, MAX_PREFETCH, Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def attempt(pacer: Pacer, clock: Clock, run_id: int, seconds: float) -> None:
    pacer.started(run_id)
    clock.now += seconds
    pacer.ended(run_id)


def test_nothing_is_claimed_ahead_before_a_run_has_ended() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    assert pacer.capacity() == 4
    pacer.started(1)
    clock.now += 0.001
    assert pacer.capacity() == 4


def test_short_runs_grow_the_prefetch_to_its_cap() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    attempt(pacer, clock, 1, 0.000_01)
    assert pacer.prefetch() == MAX_PREFETCH
    assert pacer.capacity() == 4 + MAX_PREFETCH


def test_the_prefetch_holds_half_a_second_of_work() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    attempt(pacer, clock, 1, 0.01)
    assert abs(pacer.prefetch() - 4 * AHEAD_SECONDS / 0.01) <= 1  # 200 runs: 0.5 s on 4 threads


def test_long_runs_take_one_run_per_thread() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    attempt(pacer, clock, 1, 3.0)
    assert pacer.capacity() == 4


def test_a_long_run_after_short_ones_stops_the_prefetch_while_it_runs() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    for run_id in range(50):
        attempt(pacer, clock, run_id, 0.000_1)
    assert pacer.prefetch() == MAX_PREFETCH
    pacer.started(99)
    clock.now += 2 * AHEAD_SECONDS * 4
    assert pacer.prefetch() == 0


def test_what_was_measured_is_forgotten_after_a_pause() -> None:
    clock = Clock()
    pacer = Pacer(4, None, clock=clock)
    attempt(pacer, clock, 1, 0.000_1)
    assert pacer.prefetch() == MAX_PREFETCH
    clock.now += FORGET_AFTER / 2
    assert pacer.prefetch() == MAX_PREFETCH  # still busy enough to count
    clock.now += FORGET_AFTER
    assert pacer.capacity() == 4  # a new burst may be long runs: one per thread first


def test_a_fixed_prefetch_is_kept() -> None:
    clock = Clock()
    pacer = Pacer(4, 0, clock=clock)
    attempt(pacer, clock, 1, 0.000_1)
    assert pacer.capacity() == 4
    assert Pacer(2, 10, clock=clock).capacity() == 12
