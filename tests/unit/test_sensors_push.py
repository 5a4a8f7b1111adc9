"""Push sensors: one evaluation per message, on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import ferryman as fm
from tests.helpers import incompressible
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


def test_message_ids_are_compared_per_sensor_not_as_one_string(make_app: type[fm.App]) -> None:
    app = make_app()
    calls: list[tuple[str, str]] = []

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    def record(ctx: fm.SensorContext, message: fm.Message) -> fm.RunRequest:
        calls.append((ctx.sensor, message.message_id))
        return fm.RunRequest(f"{ctx.sensor}/{message.message_id}")

    app.push_sensor(job="load", name="orders")(record)
    app.push_sensor(job="load", name="orders:eu")(record)

    # "push:orders:eu:42" both ways: one message each, never one taken for the other.
    first, created_first = app.deliver("orders", "eu:42")
    second, created_second = app.deliver("orders:eu", "42")
    assert created_first and created_second
    assert first.id != second.id
    assert (first.message_id, second.message_id) == ("eu:42", "42")
    assert calls == [("orders", "eu:42"), ("orders:eu", "42")]
    assert sorted(run.run_key for run in app.get_runs()) == ["orders/eu:42", "orders:eu/42"]
    assert app.deliver("orders:eu", "42") == (second, False)  # a real redelivery still is one
    # The same id sent to another sensor is another message.
    third, created_third = app.deliver("orders", "42")
    assert created_third and third.id not in (first.id, second.id)
    assert calls[-1] == ("orders", "42")
    assert app.deliver("orders", "42") == (third, False)


def recording_app(make_app: type[fm.App], **settings: object) -> tuple[fm.App, list[str]]:
    """An app whose push sensor ``hook`` requests run ``run-<message id>``, and its calls."""
    app = make_app(**settings)
    calls: list[str] = []

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.push_sensor(job="load")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> fm.RunRequest:
        calls.append(message.message_id)
        return fm.RunRequest(f"run-{message.message_id}")

    return app, calls


def test_a_redelivery_is_recognised_after_its_evaluation_history_was_pruned(
    make_app: type[fm.App],
) -> None:
    app, calls = recording_app(make_app, evaluation_retention=1)
    first = app.ingest("hook", "m-1")
    for message_id in ("m-2", "m-3"):
        app.ingest("hook", message_id)
    app.prune_evaluations()
    assert app.deliver("hook", "m-1") == (first, False)  # its evaluation is kept with it
    assert calls == ["m-1", "m-2", "m-3"]


def test_deliveries_are_forgotten_after_the_retention_window(make_app: type[fm.App]) -> None:
    # Three apps on one store, remembering deliveries 7 days (the default), 0 s, for ever.
    keep, kept_calls = recording_app(make_app)
    forget, forgotten_calls = recording_app(make_app, delivery_retention=0.0)
    forever, _ = recording_app(make_app, delivery_retention=None)

    assert keep.delivery_retention == timedelta(days=7)
    first = keep.ingest("hook", "m-1")
    assert keep.prune_deliveries() == 0  # within the default seven days
    assert keep.deliver("hook", "m-1") == (first, False)

    assert forget.prune_deliveries() == 1  # the same store, with a window of zero
    again, created = forget.deliver("hook", "m-1")
    assert created and again.id != first.id  # not recognised any more: evaluated again
    assert (again.runs_requested, again.runs_deduplicated) == (1, 1)  # its run_key still holds
    assert kept_calls == forgotten_calls == ["m-1"]
    assert [run.run_key for run in keep.get_runs()] == ["run-m-1"]

    assert forever.prune_deliveries() == 0
    assert forever.deliver("hook", "m-1")[1] is False
    with pytest.raises(fm.ConfigurationError, match="delivery_retention"):
        make_app(delivery_retention=-1.0)
    with pytest.raises(fm.ConfigurationError, match="delivery_retention"):
        make_app(delivery_retention=float("nan"))


def test_message_ids_up_to_64_kib_are_delivered_once_each(make_app: type[fm.App]) -> None:
    app, _ = recording_app(make_app)
    long_id = incompressible(64 * 1024 - 1)
    first, created = app.deliver("hook", long_id + "a")
    assert created and first.outcome is fm.EvaluationOutcome.OK
    assert first.message_id == long_id + "a"
    assert app.deliver("hook", long_id + "a") == (first, False)
    other, created = app.deliver("hook", long_id + "b")  # differs in the last character only
    assert created and other.id != first.id
    assert sorted(run.run_key[-1] for run in app.get_runs()) == ["a", "b"]


@pytest.mark.parametrize(
    ("message_id", "problem"), [("m\x00-1", "NUL"), ("m-\udcff", "lone surrogate")]
)
def test_a_message_id_that_cannot_be_stored_is_refused_naming_it(
    make_app: type[fm.App], message_id: str, problem: str
) -> None:
    app, calls = recording_app(make_app)
    with pytest.raises(fm.PayloadError, match=f"message_id of sensor 'hook'.*{problem}"):
        app.ingest("hook", message_id)
    assert calls == []
    assert app.get_evaluations("hook") == [] and app.get_runs() == []
