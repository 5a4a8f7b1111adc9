"""Poll sensors and their commit rules, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.sensors.cursor import UnreadableCursor, decode_cursor, encode_cursor
from ferryman.sensors.daemon import SensorDaemon
from ferryman.store.schema import sensors
from tests.sensor_apps import assert_history_consistent


def make_sensor_app(make_app: type[fm.App], *, evaluation_retention: int = 100) -> fm.App:
    app = make_app(evaluation_retention=evaluation_retention)

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    return app


def run_keys(app: fm.App, job: str = "load") -> list[str]:
    return sorted(run.run_key for run in app.get_runs(job=job))


def stored_cursor(app: fm.App, name: str) -> str | None:
    with app.engine.begin() as conn:
        stored: str | None = conn.execute(
            sa.select(sensors.c.cursor).where(sensors.c.name == name)
        ).scalar_one()
        return stored


def set_stored_cursor(app: fm.App, name: str, stored: str) -> None:
    with app.engine.begin() as conn:
        conn.execute(sensors.update().where(sensors.c.name == name).values(cursor=stored))


# -- the commit rules --------------------------------------------------------


def test_runs_evaluation_and_cursor_commit_together(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=60)
    def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        start = int(cursor or 0)
        return fm.SensorResult(
            run_requests=[fm.RunRequest(f"n{i}", {"i": i}) for i in (start + 1, start + 2)],
            cursor=str(start + 2),
        )

    (evaluation,) = app.tick()
    assert evaluation.outcome is fm.EvaluationOutcome.OK
    assert (evaluation.cursor_before, evaluation.cursor_after) == (None, "2")
    assert (evaluation.state_version_before, evaluation.state_version_after) == (0, 1)
    assert (evaluation.runs_requested, evaluation.runs_deduplicated) == (2, 0)
    assert sorted(evaluation.run_ids) == sorted(r.id for r in app.get_runs())
    assert run_keys(app) == ["n1", "n2"]
    state = app.get_sensor("numbers")
    assert (state.cursor, state.state_version, state.consecutive_failures) == ("2", 1, 0)
    assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
    assert (state.next_evaluation_at - state.last_evaluation_at).total_seconds() == (
        pytest.approx(60, abs=1e-3)
    )
    assert app.tick() == []  # not due for another minute
    assert [e.id for e in app.get_evaluations("numbers")] == [evaluation.id]
    # The cursor is stored as a versioned envelope; users only see the value.
    assert stored_cursor(app, "numbers") == '{"v":1,"value":"2"}'


REFUSE_RUNS = {
    # The database itself refuses the runs' insert, as a full disk or a dropped
    # connection would fail the commit half-way through its statements.
    "sqlite": [
        "CREATE TRIGGER refuse_runs BEFORE INSERT ON ferryman_runs "
        "BEGIN SELECT RAISE(ABORT, 'no runs today'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse_runs() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no runs today'; END $$",
        "CREATE TRIGGER refuse_runs BEFORE INSERT ON ferryman_runs "
        "FOR EACH ROW EXECUTE FUNCTION refuse_runs()",
    ],
    "mariadb": [
        "CREATE TRIGGER refuse_runs BEFORE INSERT ON ferryman_runs FOR EACH ROW "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'no runs today'",
    ],
}
# How each database drops that trigger.
DROP_REFUSAL = {
    "sqlite": "DROP TRIGGER refuse_runs",
    "postgresql": "DROP TRIGGER refuse_runs ON ferryman_runs",
    "mariadb": "DROP TRIGGER refuse_runs",
}


def test_a_commit_the_store_refuses_leaves_the_cursor_and_writes_no_run(
    make_app: type[fm.App],
) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=0))
    def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        start = int(cursor or 0)
        return fm.SensorResult(
            run_requests=[fm.RunRequest(f"n{i}") for i in (start + 1, start + 2)],
            cursor=str(start + 2),
        )

    with app.engine.begin() as conn:
        for statement in REFUSE_RUNS[app.engine.dialect.name]:
            conn.exec_driver_sql(statement)
    (failed,) = app.tick()
    assert failed.outcome is fm.EvaluationOutcome.FAILED
    assert "no runs today" in (failed.error or "")
    assert app.get_runs() == []
    state = app.get_sensor("numbers")
    assert (state.cursor, state.consecutive_failures) == (None, 1)

    with app.engine.begin() as conn:
        conn.exec_driver_sql(DROP_REFUSAL[app.engine.dialect.name])
    (ok,) = app.tick(force=True)
    assert ok.outcome is fm.EvaluationOutcome.OK and ok.cursor_before is None
    assert run_keys(app) == ["n1", "n2"]
    assert app.get_sensor("numbers").cursor == "2"


def test_failure_on_item_5_of_10_records_nothing_then_all_10_once(
    make_app: type[fm.App],
) -> None:
    app = make_sensor_app(make_app)
    attempts: list[int] = []

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=0))
    def files(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        attempts.append(1)
        requests = []
        for number in range(1, 11):
            if number == 5 and len(attempts) == 1:
                raise OSError("file 5 of 10 could not be read")
            requests.append(fm.RunRequest(f"file-{number:02}"))
        return fm.SensorResult(run_requests=requests, cursor="file-10")

    (failed,) = app.tick()
    assert failed.outcome is fm.EvaluationOutcome.FAILED
    assert "OSError: file 5 of 10 could not be read" in (failed.error or "")
    assert "Traceback" in (failed.error or "")
    assert failed.cursor_after is None and failed.run_ids == ()
    assert app.get_runs() == []
    assert app.get_sensor("files").cursor is None

    (ok,) = app.tick()
    assert ok.outcome is fm.EvaluationOutcome.OK
    assert run_keys(app) == [f"file-{n:02}" for n in range(1, 11)]
    assert ok.runs_requested == 10
    (again,) = app.tick()  # the same ten again: deduplicated, still one run each
    assert (again.runs_requested, again.runs_deduplicated) == (10, 10)
    assert len(app.get_runs()) == 10
    assert app.get_sensor("files").consecutive_failures == 0
    assert_history_consistent(app, "files")


def test_no_cursor_in_the_result_keeps_the_stored_one(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)
    cursors: list[str | None] = []

    @app.poll_sensor(job="load", interval=0)
    def sensor(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        cursors.append(cursor)
        return fm.SensorResult(cursor="a" if cursor is None else None)

    app.tick()
    (evaluation,) = app.tick()
    app.tick()
    assert cursors == [None, "a", "a"]
    assert (evaluation.cursor_before, evaluation.cursor_after) == ("a", "a")


def test_lost_race_records_conflict_and_writes_nothing_else(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)
    calls: list[str] = []

    @app.poll_sensor(job="load", interval=0)
    def racy(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        calls.append(f"{cursor}@{ctx.state_version}")
        if len(calls) == 1:
            # Another evaluator runs and commits while this one is still working.
            (inner,) = app.tick(["racy"], force=True)
            assert inner.outcome is fm.EvaluationOutcome.OK
            return fm.SensorResult(run_requests=[fm.RunRequest("outer")], cursor="outer")
        return fm.SensorResult(run_requests=[fm.RunRequest("inner")], cursor="inner")

    (outer,) = app.tick()
    assert calls == ["None@0", "None@0"]
    assert outer.outcome is fm.EvaluationOutcome.CONFLICT
    assert outer.state_version_before == 0 and outer.state_version_after is None
    assert outer.run_ids == () and outer.runs_requested == 0
    assert "another evaluator" in (outer.error or "")
    assert run_keys(app) == ["inner"]  # the loser's run was never written
    state = app.get_sensor("racy")
    assert (state.cursor, state.state_version) == ("inner", 1)
    outcomes = [e.outcome.value for e in app.get_evaluations("racy")]
    assert outcomes == ["ok", "conflict"]
    assert_history_consistent(app, "racy")


# -- failures ----------------------------------------------------------------


def test_failure_backoff_is_deterministic_and_resets_on_success(
    make_app: type[fm.App],
) -> None:
    app = make_sensor_app(make_app)
    backoff = fm.Backoff(base=10.0, factor=2.0, max=1000.0, jitter=0.5)
    broken = {"flaky": True}

    @app.poll_sensor(job="load", interval=5, backoff=backoff)
    def flaky(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        if broken["flaky"]:
            raise RuntimeError("source unavailable")
        return fm.SensorResult(cursor="done")

    waits = []
    for failures in (1, 2, 3):
        (evaluation,) = app.tick(force=True)
        assert evaluation.outcome is fm.EvaluationOutcome.FAILED
        state = app.get_sensor("flaky")
        assert state.consecutive_failures == failures
        assert state.cursor is None
        assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
        waits.append((state.next_evaluation_at - state.last_evaluation_at).total_seconds())
        assert app.tick() == []  # backing off: not due
    expected = [backoff.delay(n, key="flaky") for n in (1, 2, 3)]
    assert waits == pytest.approx(expected, abs=1e-3)
    # Same inputs, same delays; the jitter comes from the sensor's name, not a draw.
    assert expected == [backoff.delay(n, key="flaky") for n in (1, 2, 3)]
    assert expected != [backoff.delay(n, key="other") for n in (1, 2, 3)]
    assert 5 <= expected[0] <= 15 and 10 <= expected[1] <= 30

    broken["flaky"] = False
    (ok,) = app.tick(force=True)
    assert ok.outcome is fm.EvaluationOutcome.OK
    state = app.get_sensor("flaky")
    assert state.consecutive_failures == 0 and state.cursor == "done"
    assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
    assert (state.next_evaluation_at - state.last_evaluation_at).total_seconds() == (
        pytest.approx(5, abs=1e-3)
    )
    assert_history_consistent(app, "flaky")


def test_a_bad_result_fails_the_evaluation_with_a_clear_error(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)
    cases: list[tuple[object, str]] = [
        (["not", "a", "result"], "returned list, expected ferryman.SensorResult"),
        (fm.SensorResult(cursor=7), "returned a int cursor"),  # type: ignore[arg-type]
        (
            fm.SensorResult(run_requests=[fm.RunRequest("x", job="elsewhere")]),
            "routed run_key 'x' to job 'elsewhere', which is not among its jobs ['load']",
        ),
        (fm.SensorResult(run_requests=["x"]), "returned a str among its run requests"),  # type: ignore[list-item]
    ]
    results = [result for result, _ in cases]

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=0))
    def bad(ctx: fm.SensorContext, cursor: str | None) -> object:
        return results.pop(0)

    for failures, (_, message) in enumerate(cases, start=1):
        (evaluation,) = app.tick()
        assert evaluation.outcome is fm.EvaluationOutcome.FAILED
        assert message in (evaluation.error or "")
        assert "Traceback" not in (evaluation.error or "")
        assert app.get_runs() == []
        state = app.get_sensor("bad")
        assert (state.cursor, state.consecutive_failures) == (None, failures)


def test_a_bad_item_is_skipped_with_its_reason_and_the_others_go_on(
    make_app: type[fm.App],
) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=0))
    def items(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(
            run_requests=[
                fm.RunRequest("good-1", {"n": 1}),
                fm.RunRequest("when", {"at": datetime(2026, 1, 1)}),
                fm.RunRequest("nul\x00key"),
                fm.RunRequest("nan", {"value": float("nan")}),
                fm.RunRequest("good-2", {"n": 2}),
            ],
            cursor="5",
            skipped=1,
        )

    (evaluation,) = app.tick()
    assert evaluation.outcome is fm.EvaluationOutcome.OK
    assert run_keys(app) == ["good-1", "good-2"]
    assert app.get_sensor("items").cursor == "5"
    assert (evaluation.runs_requested, evaluation.items_skipped) == (2, 4)
    reasons = evaluation.error or ""
    assert reasons.startswith("3 run requests skipped")
    assert "payload of job 'load' run_key 'when' is not JSON-serialisable" in reasons
    assert "run_key of job 'load'" in reasons and "NUL" in reasons
    assert "payload of job 'load' run_key 'nan' is not JSON-serialisable" in reasons
    assert app.get_sensor("items").consecutive_failures == 0


def test_an_error_in_ferrymans_own_code_after_the_sensor_is_a_failed_evaluation(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=60))
    def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(run_requests=[fm.RunRequest("n1")], cursor="1")

    def broken(commit: object) -> fm.Evaluation:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(app.store, "commit_poll_evaluation", broken)
    (evaluation,) = app.tick()
    assert evaluation.outcome is fm.EvaluationOutcome.FAILED
    assert "UnicodeEncodeError" in (evaluation.error or "")
    state = app.get_sensor("numbers")
    assert (state.cursor, state.consecutive_failures) == (None, 1)
    assert state.next_evaluation_at is not None and state.last_evaluation_at is not None
    assert (state.next_evaluation_at - state.last_evaluation_at).total_seconds() > 50
    assert app.tick() == []  # backing off, not evaluated again at once
    monkeypatch.undo()
    (recovered,) = app.tick(force=True)
    assert recovered.outcome is fm.EvaluationOutcome.OK and run_keys(app) == ["n1"]


@pytest.mark.parametrize(
    ("error", "least_delay"),
    [(RuntimeError("a bug in recording"), 1.0), (fm.StoreError("disk full"), 0.4)],
)
def test_an_evaluation_that_cannot_even_be_recorded_backs_off_in_the_daemon(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch, error: Exception, least_delay: float
) -> None:
    app = make_sensor_app(make_app)
    calls: list[float] = []
    twice = threading.Event()
    backoff = fm.Backoff(base=1.0, jitter=0.0)  # the sensor's own: 1 s after a first failure

    @app.poll_sensor(job="load", interval=0, backoff=backoff)
    def doomed(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        calls.append(time.monotonic())
        if len(calls) == 2:
            twice.set()
        return fm.SensorResult(cursor="1")

    def broken(*args: object, **kwargs: object) -> fm.Evaluation:
        raise error

    monkeypatch.setattr(app.store, "commit_poll_evaluation", broken)
    monkeypatch.setattr(app.store, "record_poll_failure", broken)
    loop = SensorDaemon(app._sensor_engine, idle_wait=0.05)
    loop.start()
    try:
        assert twice.wait(30), "the sensor was not evaluated again after its crash"
    finally:
        loop.stop()
        assert loop.join(30)
    assert calls[1] - calls[0] >= least_delay  # held back, not evaluated again at once
    assert loop.crashes == 0  # the loop itself carried on


def test_unreadable_stored_cursor_fails_that_sensor_only(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)
    seen: list[str | None] = []

    @app.poll_sensor(job="load", interval=0, backoff=fm.Backoff(base=0))
    def damaged(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        seen.append(cursor)
        return fm.SensorResult(cursor=f"{cursor}+")

    @app.poll_sensor(job="load", interval=0)
    def healthy(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(run_requests=[fm.RunRequest("h")], cursor="h")

    app.tick()
    for stored in ('{"v": 9, "value": "x"}', "not json at all", '"bare string"'):
        set_stored_cursor(app, "damaged", stored)
        by_sensor = {e.sensor: e for e in app.tick()}
        assert by_sensor["healthy"].outcome is fm.EvaluationOutcome.OK
        failed = by_sensor["damaged"]
        assert failed.outcome is fm.EvaluationOutcome.FAILED
        assert "sensor 'damaged'" in (failed.error or "")
        assert repr(stored) in (failed.error or "")
        assert app.get_sensor("damaged").cursor == stored  # shown as stored
        assert stored_cursor(app, "damaged") == stored  # untouched
    assert seen == [None]  # the sensor's code never saw a bad cursor

    fixed = app.set_cursor("damaged", "repaired", by="ops")
    assert fixed.outcome is fm.EvaluationOutcome.MANUAL and fixed.cursor_before == stored
    assert {e.sensor: e.outcome.value for e in app.tick()}["damaged"] == "ok"
    assert seen[-1] == "repaired"


def test_cursor_envelope_round_trip_and_errors() -> None:
    for value in (None, "", "2026-01-01T00:00:00|a/b.xml", "ünïcødé", '{"v":1}'):
        assert decode_cursor("s", encode_cursor(value)) == value
    assert encode_cursor("x") == '{"v":1,"value":"x"}'
    for stored in ("[1]", '{"v":1}', '{"v":1,"value":2}', '{"v":2,"value":"x"}', "{"):
        with pytest.raises(UnreadableCursor, match="sensor 's': stored cursor"):
            decode_cursor("s", stored)


def test_hung_sensor_times_out_and_its_late_result_never_commits(
    make_app: type[fm.App],
) -> None:
    app = make_sensor_app(make_app)
    release, late = threading.Event(), threading.Event()

    @app.poll_sensor(job="load", interval=0, timeout=0.2, backoff=fm.Backoff(base=0))
    def stuck(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        if ctx.state_version == 0:
            release.wait(30)
            late.set()
            return fm.SensorResult(run_requests=[fm.RunRequest("late")], cursor="late")
        return fm.SensorResult(run_requests=[fm.RunRequest("on-time")], cursor="on-time")

    (timed_out,) = app.tick()
    assert timed_out.outcome is fm.EvaluationOutcome.FAILED
    assert "did not return within its timeout of 0.2s" in (timed_out.error or "")
    assert timed_out.state_version_after == 1  # the failure moved the version on
    (next_one,) = app.tick()
    assert next_one.outcome is fm.EvaluationOutcome.OK

    release.set()
    assert late.wait(10)
    assert app.tick()[0].outcome is fm.EvaluationOutcome.OK  # called again as usual
    assert run_keys(app) == ["on-time"]
    assert app.get_sensor("stuck").cursor == "on-time"
    assert len(app.get_evaluations("stuck")) == 3
    assert_history_consistent(app, "stuck")


# -- operator actions --------------------------------------------------------


def test_pause_and_resume(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=3600)
    def hourly(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(cursor=str(int(cursor or 0) + 1))

    assert len(app.tick()) == 1
    paused = app.pause_sensor("hourly")
    assert paused.status == "paused"
    assert app.tick(force=True) == []  # a paused sensor is not evaluated, even forced
    assert app.get_sensor("hourly").status == "paused"
    resumed = app.resume_sensor("hourly")
    assert resumed.status == "running"
    (evaluation,) = app.tick()  # resuming makes it due at once, despite the hour
    assert evaluation.cursor_after == "2"
    with pytest.raises(fm.UnknownSensor, match="unknown sensor 'nope'"):
        app.pause_sensor("nope")


def test_set_cursor_is_a_manual_evaluation_recording_who(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)
    seen: list[str | None] = []

    @app.poll_sensor(job="load", interval=3600)
    def sensor(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        seen.append(cursor)
        return fm.SensorResult(cursor=f"{cursor}>")

    app.tick()
    manual = app.set_cursor("sensor", "rewound", by="alice")
    assert manual.outcome is fm.EvaluationOutcome.MANUAL
    assert (manual.cursor_before, manual.cursor_after) == ("None>", "rewound")
    assert (manual.state_version_before, manual.state_version_after) == (1, 2)
    assert manual.evaluator == "alice"
    assert app.get_evaluations("sensor")[-1].evaluator == "alice"
    app.tick()  # due at once after a manual change
    assert seen == [None, "rewound"]
    cleared = app.set_cursor("sensor", None)
    assert cleared.cursor_after is None and app.get_sensor("sensor").cursor is None
    assert [e.outcome.value for e in app.get_evaluations("sensor")] == [
        "ok", "manual", "ok", "manual"
    ]  # fmt: skip
    assert_history_consistent(app, "sensor")


# -- routing, registration, history ------------------------------------------


def test_routing_sensor_sends_each_request_to_its_job(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)

    @app.job
    def archive(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="load", jobs=["archive"], interval=0)
    def router(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        assert (ctx.job, ctx.jobs) == ("load", ("load", "archive"))
        return fm.SensorResult(
            run_requests=[fm.RunRequest("a.xml"), fm.RunRequest("b.zip", job="archive")],
            cursor="b",
            skipped=3,
        )

    (evaluation,) = app.tick()
    assert evaluation.items_skipped == 3
    assert run_keys(app, "load") == ["a.xml"]
    assert run_keys(app, "archive") == ["b.zip"]


def test_sensor_context_is_public() -> None:
    assert "SensorContext" in fm.__all__
    assert fm.SensorContext.__doc__ and "state_version" in fm.SensorContext.__doc__


def test_registration_errors() -> None:
    app = fm.App("sqlite:///unused.db")

    def fn(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult()

    with pytest.raises(fm.ConfigurationError, match="sends runs nowhere"):
        app.poll_sensor()(fn)
    with pytest.raises(fm.ConfigurationError, match="interval must be a finite number >= 0"):
        app.poll_sensor(job="x", interval=-1)(fn)
    with pytest.raises(fm.ConfigurationError, match="timeout must be a finite number > 0"):
        app.poll_sensor(job="x", timeout=0)(fn)
    app.poll_sensor(job="x")(fn)
    with pytest.raises(fm.ConfigurationError, match="registered twice"):
        app.push_sensor(job="x")(fn)
    with pytest.raises(fm.ConfigurationError, match="is a poll sensor, not push"):
        app.ingest("fn", "m1")
    with pytest.raises(fm.UnknownSensor, match=r"unknown sensor 'nope' \(registered: fn\)"):
        app.tick(["nope"])


def test_history_limit_and_retention_pruning(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app, evaluation_retention=3)

    @app.poll_sensor(job="load", interval=0)
    def counter(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(str(n))], cursor=str(n))

    @app.poll_sensor(job="load", interval=3600)
    def rare(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(cursor="r")

    for _ in range(6):
        app.tick()
    newest = app.get_evaluations("counter", limit=2)
    assert [e.cursor_after for e in newest] == ["5", "6"]  # the newest two, oldest first
    assert app.prune_evaluations() == 3
    assert [e.cursor_after for e in app.get_evaluations("counter")] == ["4", "5", "6"]
    assert len(app.get_evaluations("rare")) == 1  # kept: per sensor
    state = app.get_sensor("counter")
    assert (state.cursor, state.state_version) == ("6", 6)  # state is never pruned
    assert app.prune_evaluations(keep_last=1) == 2
    assert len(app.get_runs()) == 6
    app.tick()
    assert [e.state_version_before for e in app.get_evaluations("counter")] == [5, 6]


def test_sensors_lists_stored_and_registered(make_app: type[fm.App]) -> None:
    app = make_sensor_app(make_app)

    @app.poll_sensor(job="load", interval=0)
    def polled(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(cursor="p")

    @app.push_sensor(job="load")
    def pushed(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        return []

    before = {s.name: s for s in app.sensors()}
    assert set(before) == {"polled", "pushed"}
    assert before["polled"].state_version == 0 and before["pushed"].kind == "push"
    app.tick()
    app.ingest("pushed", "m1")
    other = make_app()  # another App on the same store, without the registrations
    listed = {s.name: s for s in other.sensors()}
    assert listed["polled"].cursor == "p" and listed["polled"].kind == "poll"
    assert listed["pushed"].last_evaluation_at is not None
    assert other.get_sensor("polled").cursor == "p"
    assert [e.outcome.value for e in other.get_evaluations("pushed")] == ["ok"]
    with pytest.raises(fm.UnknownSensor):
        other.get_evaluations("nope")
