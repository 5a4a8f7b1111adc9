"""The figures behind ``ferryman work``'s progress view: counts since start, rate, ETA."""

from __future__ import annotations

import pytest

from ferryman.cli.progress import RATE_WINDOW, ProgressTracker, Snapshot


def test_counts_rate_and_eta_come_from_the_store_counts() -> None:
    tracker = ProgressTracker(Snapshot(at=100.0, succeeded=40, failed=2, to_go=100))
    figures = tracker.add(Snapshot(at=102.0, succeeded=55, failed=7, to_go=80))
    assert (figures.succeeded, figures.failed, figures.done, figures.to_go) == (15, 5, 20, 80)
    assert figures.rate == pytest.approx(10.0)  # 20 runs finished in 2 s
    assert figures.eta == pytest.approx(8.0)  # 80 to go at 10 runs/s


def test_the_rate_forgets_samples_older_than_its_window() -> None:
    tracker = ProgressTracker(Snapshot(at=0.0, succeeded=0, failed=0, to_go=1000))
    tracker.add(Snapshot(at=1.0, succeeded=500, failed=0, to_go=500))  # a fast start
    at = 1.0
    succeeded = 500
    while at < 1.0 + 3 * RATE_WINDOW:  # then a steady 2 runs/s
        at += 1.0
        succeeded += 2
        figures = tracker.add(Snapshot(at=at, succeeded=succeeded, failed=0, to_go=400))
    assert figures.rate == pytest.approx(2.0)
    assert figures.eta == pytest.approx(200.0)


def test_no_rate_before_anything_finished() -> None:
    tracker = ProgressTracker(Snapshot(at=0.0, succeeded=0, failed=0, to_go=10))
    figures = tracker.add(Snapshot(at=1.0, succeeded=0, failed=0, to_go=10))
    assert (figures.rate, figures.eta) == (0.0, None)
