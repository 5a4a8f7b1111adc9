"""Numeric settings out of range — NaN and infinities included — are refused up front.

A NaN slips past ``value <= 0`` (every comparison with it is false): a NaN
lease was stored as NULL and never expired, a NaN backoff crashed the
committer. Each setting must be refused with a ConfigurationError that names
it, before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm

NAN, INF = math.nan, math.inf


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A store URL that none of these tests may open: refused settings write nothing."""
    yield f"sqlite:///{tmp_path}/store.db"
    assert list(tmp_path.iterdir()) == []


def app_with_a_job(store: str) -> fm.App:
    app = fm.App(store)
    app.job(name="load")(lambda ctx, payload: None)
    return app


@pytest.mark.parametrize("value", [NAN, INF, -INF, 0, -1.0, "30", None])
def test_lease_seconds_must_be_a_finite_positive_number(value: Any, store: str) -> None:
    with pytest.raises(fm.ConfigurationError, match="lease_seconds"):
        fm.App(store, lease_seconds=value)


@pytest.mark.parametrize("value", [NAN, INF, 0, 2.5, True])
def test_evaluation_retention_must_be_a_whole_number(value: Any, store: str) -> None:
    with pytest.raises(fm.ConfigurationError, match="evaluation_retention"):
        fm.App(store, evaluation_retention=value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        *(("base", v) for v in (NAN, INF, -1.0)),
        *(("factor", v) for v in (NAN, INF, 0.5)),
        *(("max", v) for v in (NAN, INF, -1.0)),
        *(("jitter", v) for v in (NAN, INF, 1.0, -0.1)),
    ],
)
def test_backoff_fields_must_be_finite_and_in_range(field: str, value: float) -> None:
    with pytest.raises(fm.ConfigurationError, match=f"Backoff.{field}") as raised:
        fm.Backoff(**{field: value})
    assert isinstance(raised.value, fm.FerrymanError)


def test_backoff_delays_stay_finite_for_any_attempt() -> None:
    backoff = fm.Backoff(base=1.0, factor=10.0, max=300.0)
    # factor ** (attempt - 1) leaves the float range long before attempt 5000.
    delays = [backoff.delay(attempt, "job\x00key") for attempt in (1, 400, 1100, 5000)]
    assert all(math.isfinite(d) and 0 <= d <= 300.0 for d in delays)
    assert fm.Backoff(base=0).delay(5000, "k") == 0.0


@pytest.mark.parametrize("value", [NAN, INF, 0, 1.5, True, "3"])
def test_job_max_attempts_must_be_a_whole_number(value: Any, store: str) -> None:
    app = fm.App(store)
    with pytest.raises(fm.ConfigurationError, match="max_attempts"):
        app.job(max_attempts=value)(lambda ctx, payload: None)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        *(("concurrency", v) for v in (NAN, INF, 0, 1.5)),
        *(("processes", v) for v in (NAN, 0)),
        *(("prefetch", v) for v in (NAN, INF, -1)),
        *(("claim_batch", v) for v in (NAN, INF, 0)),
        *(("poll_interval", v) for v in (NAN, INF, 0)),
        *(("grace_seconds", v) for v in (NAN, INF, -1.0)),
    ],
)
def test_work_settings_must_be_finite_and_in_range(setting: str, value: Any, store: str) -> None:
    app = app_with_a_job(store)
    with pytest.raises(fm.ConfigurationError, match=setting):
        app.work(until_idle=True, handle_signals=False, **{setting: value})


@pytest.mark.parametrize(
    ("setting", "value"),
    [("concurrency", NAN), ("prefetch", INF), ("grace_seconds", NAN), ("sensor_concurrency", 0)],
)
@pytest.mark.timeout(30)  # accepted, the daemon would run until killed
def test_daemon_settings_are_refused_before_it_starts(setting: str, value: Any, store: str) -> None:
    app = app_with_a_job(store)
    with pytest.raises(fm.ConfigurationError, match=setting):
        app.run(**{setting: value})


@pytest.mark.parametrize(("setting", "value"), [("interval", NAN), ("interval", INF)])
def test_poll_sensor_interval_must_be_finite(setting: str, value: float, store: str) -> None:
    app = app_with_a_job(store)
    with pytest.raises(fm.ConfigurationError, match=f"sensor 'numbers': {setting}"):
        app.poll_sensor(job="load", name="numbers", **{setting: value})(lambda ctx, cursor: None)


@pytest.mark.parametrize("value", [NAN, INF, 0])
def test_sensor_timeout_must_be_finite_and_positive(value: float, store: str) -> None:
    app = app_with_a_job(store)
    with pytest.raises(fm.ConfigurationError, match="sensor 'inbox': timeout"):
        app.push_sensor(job="load", name="inbox", timeout=value)(lambda ctx, message: [])
