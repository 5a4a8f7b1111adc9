"""deliver_many: the push rules of one delivery, one transaction for many messages."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import ferryman as fm
from ferryman.sensors.batch import deliver_many
from ferryman.sensors.registry import SensorKind
from ferryman.store.sensors import PushCommit


def build(make_app: type[fm.App]) -> fm.App:
    app = make_app()

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.push_sensor("load")
    def events(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        if message.payload == "boom":
            raise ValueError("cannot read this one")
        return [fm.RunRequest(f"run-{message.message_id}", message.payload)]

    return app


def test_a_batch_makes_one_evaluation_and_one_run_per_message(make_app: type[fm.App]) -> None:
    app = build(make_app)
    delivered = deliver_many(app._sensor_engine, "events", [(f"m{n}", n) for n in range(50)])
    assert [d.evaluation.message_id for d in delivered] == [f"m{n}" for n in range(50)]
    assert all(d.created and d.evaluation.outcome is fm.EvaluationOutcome.OK for d in delivered)
    runs = app.get_runs(job="load")
    assert sorted(r.run_key for r in runs) == sorted(f"run-m{n}" for n in range(50))
    by_key = {r.run_key: r.id for r in runs}
    assert all(d.evaluation.run_ids == (by_key[f"run-m{n}"],) for n, d in enumerate(delivered))


def test_a_redelivered_batch_writes_nothing(make_app: type[fm.App]) -> None:
    app = build(make_app)
    first = app.ingest("events", "m1", 1)
    delivered = deliver_many(app._sensor_engine, "events", [("m1", 1), ("m2", 2), ("m2", 2)])
    assert [d.created for d in delivered] == [False, True, False]
    assert delivered[0].evaluation.id == first.id
    assert delivered[1].evaluation.id == delivered[2].evaluation.id
    again = deliver_many(app._sensor_engine, "events", [("m1", 1), ("m2", 2)])
    assert [d.created for d in again] == [False, False]
    assert len(app.get_evaluations("events")) == 2
    assert len(app.get_runs()) == 2


def test_each_evaluation_of_a_batch_counts_its_own_deduplicated_runs(
    make_app: type[fm.App],
) -> None:
    app = build(make_app)
    app.submit("load", fm.RunRequest("run-a"))
    delivered = deliver_many(app._sensor_engine, "events", [("a", None), ("b", None), ("c", None)])
    # The sensor keys runs by message id: "a" meets the run submitted before.
    counts = [(d.evaluation.runs_requested, d.evaluation.runs_deduplicated) for d in delivered]
    assert counts == [(1, 1), (1, 0), (1, 0)]
    assert len(app.get_runs()) == 3


def test_failures_and_refusals_are_recorded_with_their_reason_and_no_delivery(
    make_app: type[fm.App],
) -> None:
    app = build(make_app)
    delivered = deliver_many(
        app._sensor_engine,
        "events",
        [("ok", 1), ("bad", "boom")],
        refused=[("undecodable", "the payload does not decode")],
    )
    outcomes = [d.evaluation.outcome for d in delivered]
    ok, failed = fm.EvaluationOutcome.OK, fm.EvaluationOutcome.FAILED
    assert outcomes == [ok, failed, failed]
    assert "cannot read this one" in (delivered[1].evaluation.error or "")
    assert delivered[2].evaluation.error == "the payload does not decode"
    # No delivery was recorded for the failures: delivering them again runs the sensor again.
    retried = deliver_many(app._sensor_engine, "events", [("bad", 2)])
    assert retried[0].created and retried[0].evaluation.outcome is fm.EvaluationOutcome.OK


def test_a_paused_sensor_asks_for_the_batch_again_later(make_app: type[fm.App]) -> None:
    app = build(make_app)
    app.pause_sensor("events")
    delivered = deliver_many(app._sensor_engine, "events", [("m1", 1)])
    assert delivered[0].retry_later
    assert app.get_runs() == []


def test_a_message_id_that_cannot_be_stored_refuses_the_batch(make_app: type[fm.App]) -> None:
    app = build(make_app)
    with pytest.raises(fm.PayloadError):
        deliver_many(app._sensor_engine, "events", [("ok", 1), ("a\x00b", 2)])
    assert app.get_runs() == []


def test_a_delivery_another_transaction_committed_first_writes_nothing(
    make_app: type[fm.App],
) -> None:
    """The race deliver_many's look-up cannot see: the commit itself keeps one delivery."""
    app = build(make_app)
    first = app.ingest("events", "m1", 1)
    engine = app._sensor_engine
    definition = engine.definition("events", SensorKind.PUSH)
    state, now = app.store.read_sensor("events")
    assert state is not None
    # Both evaluated as if m1 were new, as a consumer racing the first delivery would.
    made = [engine.push_commit(definition, state, now, m, n) for n, m in enumerate(["m1", "m2"])]
    commits = [commit for commit in made if isinstance(commit, PushCommit)]
    assert len(commits) == 2, made
    committed, failed = app.store.commit_push_batch(commits, [])
    assert failed == []
    assert [created for _, created in committed] == [False, True]
    assert committed[0][0].id == first.id and committed[0][0].run_ids == first.run_ids
    second = committed[1][0]
    assert second.message_id == "m2" and second.runs_requested == 1
    assert len(second.run_ids) == 1
    assert sorted(e.message_id or "" for e in app.get_evaluations("events")) == ["m1", "m2"]
    assert sorted(r.run_key for r in app.get_runs()) == ["run-m1", "run-m2"]


def test_a_message_delivered_to_another_sensor_is_new_to_this_one(
    make_app: type[fm.App],
) -> None:
    app = build(make_app)

    @app.push_sensor("load")
    def audits(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        return [fm.RunRequest(f"audit-{message.message_id}", message.payload)]

    to_events = deliver_many(app._sensor_engine, "events", [("m1", 1)])
    to_audits = deliver_many(app._sensor_engine, "audits", [("m1", 1), ("m2", 2)])
    assert [d.created for d in to_events + to_audits] == [True, True, True]
    assert {d.evaluation.sensor for d in to_audits} == {"audits"}
    assert sorted(r.run_key for r in app.get_runs()) == ["audit-m1", "audit-m2", "run-m1"]
    assert deliver_many(app._sensor_engine, "audits", [("m1", 1)])[0].evaluation.id == (
        to_audits[0].evaluation.id
    )


def test_a_late_message_fails_alone_and_its_late_result_never_commits(
    make_app: type[fm.App],
) -> None:
    app = build(make_app)
    release, late = threading.Event(), threading.Event()

    @app.push_sensor("load", timeout=0.3)
    def slow(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        if message.payload == "hang":
            release.wait(30)
            late.set()
        return [fm.RunRequest(f"slow-{message.message_id}")]

    messages = [("a", 1), ("b", "hang"), ("c", 3)]
    delivered = deliver_many(app._sensor_engine, "slow", messages)
    outcomes = [d.evaluation.outcome.value for d in delivered]
    assert outcomes == ["ok", "failed", "ok"]
    assert "did not return within its timeout of 0.3s for message 'b'" in (
        delivered[1].evaluation.error or ""
    )
    release.set()
    assert late.wait(10)
    assert sorted(r.run_key for r in app.get_runs()) == ["slow-a", "slow-c"]


def test_each_message_of_a_batch_has_the_sensors_whole_timeout(make_app: type[fm.App]) -> None:
    """Three calls of 0.4 s each under a 1 s timeout: the batch takes longer, no call does."""
    app = build(make_app)

    @app.push_sensor("load", timeout=1.0)
    def steady(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        time.sleep(0.4)  # the sensor's own work, not a wait for anything
        return [fm.RunRequest(f"steady-{message.message_id}")]

    delivered = deliver_many(app._sensor_engine, "steady", [("a", 1), ("b", 2), ("c", 3)])
    assert [d.evaluation.outcome for d in delivered] == [fm.EvaluationOutcome.OK] * 3
    assert sorted(r.run_key for r in app.get_runs()) == ["steady-a", "steady-b", "steady-c"]
