"""JSON objects into RunRequests: the one place ``ferryman submit`` and ``POST /api/runs`` share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import ferryman as fm
from ferryman.run_requests import due_time, request_fields, run_request


def test_an_object_becomes_its_request() -> None:
    assert run_request({"run_key": "k", "payload": {"n": 1}}) == fm.RunRequest("k", {"n": 1})
    assert run_request({"run_key": "k"}) == fm.RunRequest("k")
    assert run_request({"run_key": "k", "job": "other"}).job == "other"
    assert {"run_key", "payload", "job"} <= request_fields()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"payload": 1}, "line 4: run_key is missing"),
        ({"run_key": ""}, "line 4: run_key must be a non-empty string"),
        ({"run_key": 7}, "line 4: run_key must be a non-empty string, got 7"),
        ({"run_key": "k", "colour": "red"}, "line 4: unknown field 'colour'; a run request has"),
        (["k"], "line 4: expected a JSON object, got list"),
    ],
)
def test_what_is_not_a_request_is_refused_naming_where(record: object, message: str) -> None:
    with pytest.raises(fm.PayloadError) as refused:
        run_request(record, where="line 4")  # type: ignore[arg-type]
    assert message in str(refused.value)


def test_due_times_are_from_now_or_aware_instants() -> None:
    assert due_time("+90s") == timedelta(seconds=90)
    assert due_time("+10m") == timedelta(minutes=10)
    assert due_time("+1.5h") == timedelta(hours=1.5)
    assert due_time("+2d") == timedelta(days=2)
    assert due_time("2026-12-05T10:00:00Z") == datetime(2026, 12, 5, 10, tzinfo=UTC)
    assert due_time("2026-12-05T11:00:00+01:00") == datetime(
        2026, 12, 5, 11, tzinfo=timezone(timedelta(hours=1))
    )
    with pytest.raises(fm.PayloadError, match="has no UTC offset"):
        due_time("2026-12-05T10:00:00")
    with pytest.raises(fm.PayloadError, match=r"neither an ISO 8601 time nor \+N"):
        due_time("in ten minutes")
