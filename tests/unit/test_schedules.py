"""Schedules on a real SQLite file and a real PostgreSQL database.

Most tests move a fake clock (``clock=``) and evaluate with ``tick(force=True)``;
the daemon test runs on the store's own clock.
"""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.sensors import SensorDaemon
from ferryman.sensors.schedule import iso
from ferryman.web import WebSettings, create_app
from tests.helpers import wait_until
from tests.sensor_apps import assert_history_consistent
from tests.unit.test_sensors_cli import invoke


class FakeClock:
    def __init__(self, start: str) -> None:
        self.now = datetime.fromisoformat(start)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def schedule_app(
    make_app: type[fm.App], clock: FakeClock | None, name: str = "reports", **options: Any
) -> fm.App:
    app = make_app()

    @app.job
    def report(ctx: fm.JobContext, payload: object) -> None: ...

    options.setdefault("cron", "*/5 * * * *")
    app.schedule(name, job="report", clock=clock, **options)
    return app


def evaluate(app: fm.App) -> fm.Evaluation:
    (evaluation,) = app.tick(force=True)
    assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
    return evaluation


def keys(app: fm.App, name: str = "reports") -> list[str]:
    return sorted(r.run_key for r in app.get_runs(job="report") if r.run_key.startswith(name))


def test_one_run_per_tick_with_exact_run_keys(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T00:03:10Z")
    app = schedule_app(make_app, clock)
    first = evaluate(app)  # a new schedule starts at the newest tick passed, without a run
    assert first.runs_requested == 0
    assert first.cursor_after == "last tick 2026-12-05T00:00:00Z, next tick 2026-12-05T00:05:00Z"
    clock.advance(minutes=2)  # 00:05:10
    assert evaluate(app).runs_requested == 1
    again = evaluate(app)  # the same tick is not run twice
    assert again.runs_requested == 0 and again.cursor_after == again.cursor_before
    for _ in range(3):
        clock.advance(minutes=5)
        assert evaluate(app).runs_requested == 1
    assert keys(app) == [
        "reports:2026-12-05T00:05:00Z",
        "reports:2026-12-05T00:10:00Z",
        "reports:2026-12-05T00:15:00Z",
        "reports:2026-12-05T00:20:00Z",
    ]
    runs = {run.run_key: run for run in app.get_runs()}
    assert runs["reports:2026-12-05T00:10:00Z"].payload == {"tick": "2026-12-05T00:10:00Z"}
    state = app.get_sensor("reports")
    assert state.kind == "poll"
    assert state.cursor == "last tick 2026-12-05T00:20:00Z, next tick 2026-12-05T00:25:00Z"
    ok = assert_history_consistent(app, "reports")
    # each run belongs to the evaluation that moved the cursor over its tick
    assert sum(e.runs_requested for e in ok) == 4


def test_a_new_expression_announces_its_own_next_tick(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T00:03:00Z")
    before = schedule_app(make_app, clock)
    evaluate(before)
    clock.advance(minutes=4)  # 00:07: the 00:05 tick of the old expression passed unseen
    after = schedule_app(make_app, clock, cron="0 * * * *", interval=600)
    evaluation = evaluate(after)
    assert evaluation.runs_requested == 0
    assert evaluation.cursor_after == (
        "last tick 2026-12-05T00:00:00Z, next tick 2026-12-05T01:00:00Z"
    )
    # the next evaluation waits for the interval, not for a tick the cursor once announced
    state = after.get_sensor("reports")
    assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
    waited = state.next_evaluation_at - state.last_evaluation_at
    assert abs(waited - timedelta(seconds=600)) < timedelta(seconds=1)


def test_payload_is_a_value_or_a_function_of_the_tick(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-07-01T21:59:00Z")
    app = make_app()

    @app.job
    def report(ctx: fm.JobContext, payload: object) -> None: ...

    app.schedule("fixed", job="report", cron="0 * * * *", payload={"region": "eu"}, clock=clock)
    app.schedule(
        "dated",
        job="report",
        cron="0 0 * * *",
        timezone="Europe/Paris",
        payload=lambda tick: {"day": tick.date().isoformat(), "hour": tick.hour},
        clock=clock,
    )
    app.tick(force=True)
    clock.advance(minutes=2)  # 22:01Z is midnight in Paris
    app.tick(force=True)
    payloads = {run.run_key: run.payload for run in app.get_runs()}
    assert payloads == {
        "fixed:2026-07-01T22:00:00Z": {"region": "eu"},
        "dated:2026-07-01T22:00:00Z": {"day": "2026-07-02", "hour": 0},
    }


def test_a_failing_payload_function_fails_the_evaluation_and_loses_no_tick(
    make_app: type[fm.App],
) -> None:
    clock = FakeClock("2026-12-05T00:03:00Z")
    broken = {"now": True}

    def payload(tick: datetime) -> object:
        if broken["now"]:
            raise RuntimeError("the calendar service is down")
        if tick.minute == 10:
            return {"when": tick}  # not JSON: this tick's run is refused, with the reason
        return {"minute": tick.minute}

    app = schedule_app(make_app, clock, payload=payload, catch_up="all")
    evaluate(app)
    clock.advance(minutes=8)  # 00:11: the ticks 00:05 and 00:10 are due
    (failed,) = app.tick(force=True)
    assert failed.outcome is fm.EvaluationOutcome.FAILED
    assert failed.error is not None and "the calendar service is down" in failed.error
    assert keys(app) == []
    broken["now"] = False
    evaluation = evaluate(app)
    assert keys(app) == ["reports:2026-12-05T00:05:00Z"]
    assert evaluation.items_skipped == 1
    assert evaluation.error is not None and "reports:2026-12-05T00:10:00Z" in evaluation.error


@pytest.mark.parametrize(
    ("catch_up", "expected", "skipped"),
    [
        # 00:05 .. 00:50 were missed (10 ticks); the clock stands at 00:50:30
        ("all", [f"00:{m:02}" for m in range(5, 55, 5)], 0),
        ("latest", ["00:50"], 9),
        ("none", ["00:50"], 9),  # the only tick less than grace (60 s) late
    ],
)
def test_catch_up_after_downtime(
    make_app: type[fm.App], catch_up: str, expected: list[str], skipped: int
) -> None:
    clock = FakeClock("2026-12-05T00:00:30Z")
    app = schedule_app(make_app, clock, catch_up=catch_up)
    evaluate(app)
    clock.advance(minutes=50)  # nothing evaluated the schedule meanwhile
    evaluation = evaluate(app)
    assert keys(app) == [f"reports:2026-12-05T{hm}:00Z" for hm in expected]
    assert evaluation.items_skipped == skipped
    assert evaluation.cursor_after is not None
    assert evaluation.cursor_after.startswith("last tick 2026-12-05T00:50:00Z")


def test_catch_up_none_skips_a_late_tick_and_the_cap_keeps_the_newest(
    make_app: type[fm.App],
) -> None:
    clock = FakeClock("2026-12-05T00:00:30Z")
    app = schedule_app(make_app, clock, catch_up="none", grace=30)
    evaluate(app)
    clock.advance(minutes=5, seconds=10)  # 00:05:40: the 00:05 tick is 40 s late
    evaluation = evaluate(app)
    assert (evaluation.runs_requested, evaluation.items_skipped) == (0, 1)
    assert evaluation.cursor_after is not None
    assert evaluation.cursor_after.startswith("last tick 2026-12-05T00:05:00Z")

    capped = schedule_app(make_app, clock, "capped", catch_up="all", max_catch_up=3)
    evaluate(capped)
    clock.advance(hours=1)  # 12 ticks missed; the newest 3 run
    evaluation = evaluate(capped)
    assert (evaluation.runs_requested, evaluation.items_skipped) == (3, 9)
    assert keys(capped, "capped") == [
        "capped:2026-12-05T00:55:00Z",
        "capped:2026-12-05T01:00:00Z",
        "capped:2026-12-05T01:05:00Z",
    ]


def step_through(app: fm.App, clock: FakeClock, until: str, minutes: float) -> None:
    end = datetime.fromisoformat(until)
    while clock.now < end:
        clock.advance(minutes=minutes)
        evaluate(app)


def test_dst_spring_forward_in_paris(make_app: type[fm.App]) -> None:
    # 2026-03-29: at 02:00 CET (01:00Z) clocks jump to 03:00 CEST.
    clock = FakeClock("2026-03-28T00:00:00Z")
    app = schedule_app(make_app, clock, cron="30 2 * * *", timezone="Europe/Paris")
    evaluate(app)
    step_through(app, clock, "2026-03-30T02:00:00Z", minutes=60)
    assert keys(app) == [
        "reports:2026-03-28T01:30:00Z",  # 02:30 CET
        "reports:2026-03-30T00:30:00Z",  # 02:30 CEST; 02:30 did not exist on the 29th
    ]


def test_dst_fall_back_in_paris(make_app: type[fm.App]) -> None:
    # 2026-10-25: at 03:00 CEST (01:00Z) clocks go back to 02:00 CET.
    clock = FakeClock("2026-10-24T22:00:00Z")
    app = schedule_app(make_app, clock, cron="30 2 * * *", timezone="Europe/Paris", catch_up="all")
    evaluate(app)
    step_through(app, clock, "2026-10-26T02:00:00Z", minutes=30)
    assert keys(app) == [
        "reports:2026-10-25T00:30:00Z",  # 02:30 CEST
        "reports:2026-10-25T01:30:00Z",  # 02:30 CET: the same wall time, another instant
        "reports:2026-10-26T01:30:00Z",
    ]
    # Evaluated only once, after the repeated hour, it still runs each instant once.
    clock = FakeClock("2026-10-24T22:00:00Z")
    late = schedule_app(
        make_app, clock, "halves", cron="*/30 * * * *", timezone="Europe/Paris", catch_up="all"
    )
    evaluate(late)
    clock.advance(hours=4)
    assert evaluate(late).runs_requested == 8
    start = datetime(2026, 10, 24, 22, tzinfo=UTC)
    assert keys(late, "halves") == [
        f"halves:{iso(start + timedelta(minutes=30 * n))}" for n in range(1, 9)
    ]


def test_pause_and_resume(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T00:00:30Z")
    app = schedule_app(make_app, clock)
    evaluate(app)
    app.pause_sensor("reports")
    clock.advance(minutes=16)  # 00:05, 00:10 and 00:15 pass while paused
    assert app.tick(["reports"], force=True) == []
    assert keys(app) == []
    assert app.resume_sensor("reports").status == "running"
    evaluation = evaluate(app)  # catch_up="latest": the newest tick runs, the others are skipped
    assert keys(app) == ["reports:2026-12-05T00:15:00Z"]
    assert evaluation.items_skipped == 2


def test_listed_by_ferryman_sensors_with_a_readable_cursor(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T00:07:00Z")
    app = schedule_app(make_app, clock)
    code, _, _ = invoke(app, "tick")
    assert code == 0
    code, out, _ = invoke(app, "sensors", "--json")
    (listed,) = [s for s in json.loads(out) if s["name"] == "reports"]
    assert listed["kind"] == "poll" and listed["status"] == "running"
    assert listed["cursor"] == "last tick 2026-12-05T00:05:00Z, next tick 2026-12-05T00:10:00Z"
    code, out, _ = invoke(app, "sensors")
    assert code == 0 and "reports" in out and "last tick" in out
    code, out, _ = invoke(app, "sensors", "pause", "reports")
    assert code == 0
    code, out, _ = invoke(app, "sensors", "resume", "reports")
    assert code == 0
    code, out, _ = invoke(app, "evaluations", "reports", "--json")
    assert [e["outcome"] for e in json.loads(out)] == ["ok"]


def test_set_cursor_backfills_and_refuses_what_it_cannot_read(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T01:00:30Z")
    app = schedule_app(make_app, clock, cron="0 * * * *", catch_up="all")
    evaluate(app)
    app.set_cursor("reports", "2026-12-04T21:30:00Z", by="alice")
    evaluate(app)
    assert keys(app) == [f"reports:2026-12-04T{h}:00:00Z" for h in (22, 23)] + [
        "reports:2026-12-05T00:00:00Z",
        "reports:2026-12-05T01:00:00Z",
    ]
    with pytest.raises(fm.ConfigurationError, match="schedule 'reports': cursor 'yesterday'"):
        app.set_cursor("reports", "yesterday")
    with pytest.raises(fm.ConfigurationError, match="no UTC offset"):
        app.set_cursor("reports", "2026-12-04T21:30:00")


@pytest.mark.parametrize(
    ("options", "field", "problem"),
    [
        ({"cron": "61 * * * *"}, "cron", "is not a cron expression: Bad minute"),
        ({"cron": "* * *"}, "cron", "Wrong number of fields"),
        ({"cron": "0 0 30 2 *"}, "cron", "Bad day-of-month"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
        ({"job": "missing"}, "job", "'missing' is not a registered job"),
        ({"catch_up": "some"}, "catch_up", "must be one of ['latest', 'all', 'none']"),
        ({"max_catch_up": 0}, "max_catch_up", "whole number >= 1"),
        ({"grace": -1}, "grace", "number >= 0"),
        ({"interval": 0}, "interval", "number > 0"),
        ({"payload": {"when": datetime(2026, 1, 1)}}, "payload", "not JSON-serialisable"),
    ],
)
def test_bad_arguments_are_refused_at_definition(
    make_app: type[fm.App], options: dict[str, Any], field: str, problem: str
) -> None:
    app = make_app()

    @app.job
    def report(ctx: fm.JobContext, payload: object) -> None: ...

    arguments: dict[str, Any] = {"job": "report", "cron": "*/5 * * * *", **options}
    with pytest.raises(fm.ConfigurationError) as raised:
        app.schedule("nightly", **arguments)
    message = str(raised.value)
    assert message.startswith(f"schedule 'nightly': {field}"), message
    assert problem in message
    assert "nightly" not in app.sensor_definitions


def test_the_daemon_evaluates_at_each_tick_not_in_between(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def report(ctx: fm.JobContext, payload: object) -> None: ...

    # An interval of an hour: only the ticks make it due, on the store's clock.
    app.schedule("seconds", job="report", cron="* * * * * *", interval=3600, catch_up="all")
    daemon = SensorDaemon(app._sensor_engine, idle_wait=0.2)
    daemon.start()
    try:
        wait_until(lambda: len(app.get_runs()) >= 3, timeout=20, what="three ticks run")
    finally:
        daemon.stop()
        daemon.join(10)
    evaluations = app.get_evaluations("seconds")
    ticks = sorted(run.run_key for run in app.get_runs())
    # The first evaluation only starts the schedule; then about one per tick.
    assert len(evaluations) <= len(ticks) + 2, [e.cursor_after for e in evaluations]
    instants = [datetime.fromisoformat(key.split(":", 1)[1]) for key in ticks]
    assert [b - a for a, b in itertools.pairwise(instants)] == [timedelta(seconds=1)] * (
        len(instants) - 1
    )
    # Each tick's run was requested right after the tick, on the store's clock (a
    # few milliseconds; the bound leaves room for a machine busy with other work).
    for run in app.get_runs():
        tick = datetime.fromisoformat(run.run_key.split(":", 1)[1])
        assert timedelta(0) <= run.created_at - tick < timedelta(seconds=2), run
    state = app.get_sensor("seconds")
    assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
    assert state.next_evaluation_at - state.last_evaluation_at <= timedelta(seconds=1.5)


def test_the_dashboard_shows_the_last_and_next_tick(make_app: type[fm.App]) -> None:
    clock = FakeClock("2026-12-05T00:07:00Z")
    app = schedule_app(make_app, clock)
    evaluate(app)
    clock.advance(minutes=5)
    evaluate(app)
    with TestClient(create_app(app, WebSettings(token="test-token-0123456789"))) as client:
        page = client.get("/sensors/reports")
        assert page.status_code == 200
        cursor = re.search(r'<code id="cursor">([^<]*)</code>', page.text)
        assert cursor is not None
        assert cursor.group(1) == ("last tick 2026-12-05T00:10:00Z, next tick 2026-12-05T00:15:00Z")
        assert "last tick 2026-12-05T00:05:00Z, next tick 2026-12-05T00:10:00Z" in page.text
        listing = client.get("/sensors").text
        assert "reports" in listing and "last tick 2026-12-05T00:10:00Z" in listing
