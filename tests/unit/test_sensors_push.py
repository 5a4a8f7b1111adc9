"""Push sensors: one evaluation per message, on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading

import ferryman as fm
from tests.sensor_apps import PUSH_MESSAGES, assert_exactly_once, push_app


def test_redelivery_returns_the_first_evaluation_and_writes_nothing(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.push_sensor(job="load")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        calls.append(message.message_id)
        assert ctx.sensor == "hook"
        return [fm.RunRequest(f"doc-{message.payload['doc']}", message.payload)]

    first = app.ingest("hook", "m-1", {"doc": 7})
    assert first.outcome is fm.EvaluationOutcome.OK
    assert first.idempotency_key == "push:hook:m-1"
    assert (first.runs_requested, first.runs_deduplicated) == (1, 0)
    again = app.ingest("hook", "m-1", {"doc": 8})  # a redelivery, even with another body
    assert again == first
    assert calls == ["m-1"]  # the sensor's code ran once
    other = app.ingest("hook", "m-2", {"doc": 7})  # another message for the same document
    assert (other.runs_requested, other.runs_deduplicated) == (1, 1)
    assert [run.run_key for run in app.get_runs()] == ["doc-7"]
    assert [run.payload for run in app.get_runs()] == [{"doc": 7}]
    assert len(app.get_evaluations("hook")) == 2


def test_failed_delivery_keeps_no_key_so_a_redelivery_runs_again(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.push_sensor(job="load")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> fm.RunRequest:
        calls.append(message.message_id)
        if len(calls) == 1:
            raise ValueError("schema registry unavailable")
        return fm.RunRequest(message.message_id)

    failed = app.ingest("hook", "m-1")
    assert failed.outcome is fm.EvaluationOutcome.FAILED
    assert failed.idempotency_key is None
    assert "ValueError: schema registry unavailable" in (failed.error or "")
    assert app.get_runs() == []
    ok = app.ingest("hook", "m-1")
    assert ok.outcome is fm.EvaluationOutcome.OK and ok.idempotency_key == "push:hook:m-1"
    assert app.ingest("hook", "m-1") == ok
    assert calls == ["m-1", "m-1"]
    assert [run.run_key for run in app.get_runs()] == ["m-1"]


def test_paused_push_sensor_processes_nothing(make_app: type[fm.App]) -> None:
    app = make_app()
    calls: list[str] = []

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.push_sensor(job="load")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> None:
        calls.append(message.message_id)

    app.pause_sensor("hook")
    refused = app.ingest("hook", "m-1")
    assert refused.outcome is fm.EvaluationOutcome.FAILED
    assert "sensor 'hook' is paused" in (refused.error or "")
    assert calls == []
    app.resume_sensor("hook")
    done = app.ingest("hook", "m-1")
    assert done.outcome is fm.EvaluationOutcome.OK and done.runs_requested == 0
    assert calls == ["m-1"]


def test_concurrent_redelivery_from_eight_threads(store_url: str) -> None:
    app = push_app(store_url)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    message_ids = [f"m{i}" for i in range(PUSH_MESSAGES)]

    def deliverer(offset: int) -> None:
        try:
            barrier.wait()
            for index in range(PUSH_MESSAGES):  # every thread, every message, own order
                message_id = message_ids[(index * 7 + offset * 25) % PUSH_MESSAGES]
                evaluation = app.ingest("hook", message_id, {"id": message_id})
                assert evaluation.outcome is fm.EvaluationOutcome.OK
                assert evaluation.idempotency_key == f"push:hook:{message_id}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliverer, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert_exactly_once(app)
    finally:
        app.close()
