"""Fuzzed message ids, payloads, cursors and sensor errors through the sensor engine.

Push messages go through ``app.ingest`` and through the HTTP ingest endpoint
(raw request bodies included); poll sensors return generated cursors or raise
generated errors, and operators set generated cursors. Each input is stored
and read back exactly, or refused with a ``FerrymanError`` (over HTTP: a 400
or 422 answer) naming the field; a message whose payload cannot be stored is
recorded as delivered with the request skipped and the reason named. No
evaluation wedges a sensor: a steady sensor evaluated in the same ticks
requests its runs every time, and the fuzzed one evaluates again at once.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.web import WebSettings, create_app
from tests.properties.profiles import bounded
from tests.properties.texts import (
    STORED,
    Opaque,
    documents,
    escaped,
    expected_document,
    json_documents,
    json_joins,
    keys,
    same_document,
    storable,
    texts,
)

TOKEN = "fuzz-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
NOT_TEXT = st.one_of(
    st.just(""),
    st.binary(max_size=4),
    st.integers(),
    st.floats(),
    st.sets(st.integers(), max_size=2),
    st.builds(Opaque),
)
SUFFIX = 200


class Inbox:
    """An app whose push sensor requests one run carrying the message's payload."""

    def __init__(self, app: fm.App) -> None:
        self.app = app
        self.seen: list[fm.Message] = []
        self.serial = itertools.count()

        @app.job
        def load(ctx: fm.JobContext, payload: Any) -> None: ...

        @app.push_sensor(job="load", name="inbox")
        def inbox(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
            self.seen.append(message)
            return [fm.RunRequest(f"msg-{next(self.serial)}", message.payload)]

    def check_recorded(self, evaluation: fm.Evaluation, message_id: str, payload: Any) -> None:
        """The delivery is recorded under its exact id; its run holds the payload or was
        skipped naming it."""
        assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
        (latest,) = self.app.get_evaluations("inbox", limit=1)
        assert latest.id == evaluation.id and latest.message_id == message_id
        assert self.seen[-1].message_id == message_id
        verdict, readback = expected_document(payload)
        if verdict == STORED:
            assert (evaluation.runs_requested, evaluation.items_skipped) == (1, 0)
            run = self.app.get_run(evaluation.run_ids[0])
            assert run is not None and same_document(run.payload, readback)
        else:
            assert (evaluation.runs_requested, evaluation.items_skipped) == (0, 1)
            assert "payload of job 'load' run_key 'msg-" in (evaluation.error or "")


def test_ingested_messages_are_recorded_exactly_or_refused_by_name(
    make_app: type[fm.App],
) -> None:
    inbox = Inbox(make_app())
    app, serial = inbox.app, itertools.count()

    @bounded(60)
    @given(
        raw_id=st.sampled_from([True, True, True, False]).flatmap(
            lambda is_key: keys() if is_key else NOT_TEXT
        ),
        payload=documents,
    )
    def deliver(raw_id: Any, payload: Any) -> None:
        calls = len(inbox.seen)
        if not isinstance(raw_id, str) or not raw_id:
            with pytest.raises(fm.FerrymanError, match="message_id"):
                app.ingest("inbox", raw_id, payload)
            assert len(inbox.seen) == calls  # refused before the sensor ran
            return
        message_id = f"{next(serial)}:{raw_id}"  # a new message, whatever hypothesis repeats
        if not storable(raw_id):
            with pytest.raises(fm.PayloadError, match="message_id of sensor 'inbox'"):
                app.ingest("inbox", message_id, payload)
            assert len(inbox.seen) == calls
            return
        evaluation = app.ingest("inbox", message_id, payload)
        inbox.check_recorded(evaluation, message_id, payload)
        again, first = app.deliver("inbox", message_id, payload)  # redelivered
        assert (again.id, first, len(inbox.seen)) == (evaluation.id, False, calls + 1)

    deliver()


# -- over HTTP ---------------------------------------------------------------------

not_ids = st.one_of(st.just(""), st.integers(), st.none(), st.lists(st.integers(), max_size=2))
http_ids = st.sampled_from([True, True, True, False]).flatmap(
    lambda is_key: keys() if is_key else not_ids
)
http_payloads = st.one_of(
    json_documents,
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.dictionaries(st.integers(0, 3), st.integers(), min_size=1, max_size=2),
)


# What a client posts: a JSON message (any id, a payload JSON can spell), a
# message nested past the bound, or bytes that are no JSON at all.
bodies = st.sampled_from(["json", "json", "json", "deep", "raw"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        st.none() if kind == "raw" else http_ids,
        {
            "json": http_payloads,
            "deep": st.sampled_from([99, 100, 101, 5_000]),
            "raw": st.binary(max_size=64),
        }[kind],
    )
)


def body_text(kind: str, message_id: Any, payload: Any) -> bytes:
    if kind == "raw":
        return bytes(payload)
    prefix = '{"message_id": ' + json.dumps(message_id) + ', "payload": '
    if kind == "deep":
        depth = int(payload)
        return (prefix + "[" * depth + "1" + "]" * depth + "}").encode()
    return (prefix + json.dumps(payload) + "}").encode()


@pytest.fixture
def http_inbox(make_app: type[fm.App]) -> Iterator[tuple[Inbox, TestClient]]:
    inbox = Inbox(make_app())
    with TestClient(
        create_app(inbox.app, WebSettings(token=TOKEN)), raise_server_exceptions=False
    ) as client:
        yield inbox, client


def test_http_ingest_records_exactly_or_answers_4xx_naming_the_field(
    http_inbox: tuple[Inbox, TestClient],
) -> None:
    inbox, client = http_inbox
    serial = itertools.count()

    @bounded(60)
    @given(body=bodies)
    @example(body=("json", "\ud800\udcff", None))  # two lone surrogates: one character sent
    def post(body: tuple[str, Any, Any]) -> None:
        kind, message_id, payload = body
        if isinstance(message_id, str):  # a new message, whatever hypothesis repeats
            message_id = f"{next(serial)}:{message_id}"
        content = body_text(kind, message_id, payload)
        response = client.post("/api/sensors/inbox/messages", content=content, headers=HEADERS)
        assert response.status_code in (201, 400, 422), response.text[:500]
        try:
            parsed = json.loads(content)
        except (ValueError, RecursionError):
            assert response.status_code in (400, 422)
            if response.status_code == 201:  # parsed on the server's stack, deeper than 100
                assert response.json()["items_skipped"] == 1
            return
        if isinstance(parsed, dict) and isinstance(parsed.get("message_id"), str):
            # The id the body spells: two lone surrogates side by side, escaped
            # as JSON, spell one character (a surrogate pair) once parsed.
            message_id = parsed["message_id"]
        if response.status_code == 201:
            assert isinstance(parsed, dict) and parsed["message_id"] == message_id
            evaluation = inbox.app.get_evaluations("inbox", limit=1)[0]
            inbox.check_recorded(evaluation, message_id, parsed.get("payload"))
            return
        detail = response.json()["detail"]
        if response.status_code == 400:  # a key the store cannot hold: named by ferryman
            assert isinstance(message_id, str) and not storable(message_id)
            assert "message_id of sensor 'inbox'" in detail
        else:  # not a message at all: named by the request's schema
            assert not (isinstance(message_id, str) and message_id and storable(message_id))
            assert all(error["loc"][0] == "body" for error in detail)
            assert isinstance(parsed, dict) or [error["loc"] for error in detail] == [["body"]]

    post()


# -- poll sensors: cursors and errors -------------------------------------------------

cursor_values = st.sampled_from(["text", "text", "none", "other"]).flatmap(
    lambda kind: {"text": texts(), "none": st.none(), "other": NOT_TEXT}[kind]
)
actions = st.sampled_from(["return", "return", "raise", "set"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        texts() if kind == "raise" else cursor_values,
        texts() if kind == "set" else st.none(),
    )
)


def test_cursors_and_sensor_errors_are_kept_exactly_and_never_wedge_a_sensor(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    plan: dict[str, Any] = {}
    received: list[str | None] = []

    @app.job
    def load(ctx: fm.JobContext, payload: Any) -> None: ...

    @app.poll_sensor(job="load", interval=3600, name="fuzzed")
    def fuzzed(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        received.append(cursor)
        if plan["action"] == "raise":
            raise RuntimeError(plan["value"])
        return fm.SensorResult(cursor=plan["value"])

    @app.poll_sensor(job="load", interval=3600, name="steady")
    def steady(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(f"steady-{n}")], cursor=str(n))

    @bounded(60)
    @given(action=actions)
    def step(action: tuple[str, Any, Any]) -> None:
        kind, value, by = action
        before = app.get_sensor("fuzzed").cursor
        if kind == "set":
            check_set_cursor(app, value, by, before)
            return
        plan.update(action=kind, value=value)
        steady_before = app.get_sensor("steady").cursor
        fuzzed_evaluation, steady_evaluation = app.tick(force=True)
        assert received[-1] == before  # the sensor got its stored cursor exactly
        assert steady_evaluation.outcome is fm.EvaluationOutcome.OK  # the other sensor went on
        assert steady_evaluation.cursor_after == str(int(steady_before or 0) + 1)
        check_poll(app, fuzzed_evaluation, kind, value, before)

    step()


def check_poll(
    app: fm.App, evaluation: fm.Evaluation, kind: str, value: Any, before: str | None
) -> None:
    after = app.get_sensor("fuzzed").cursor
    if kind == "return" and (value is None or (isinstance(value, str) and not json_joins(value))):
        assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
        expected = before if value is None else value
        assert evaluation.cursor_after == expected and after == expected
        return
    assert evaluation.outcome is fm.EvaluationOutcome.FAILED
    assert after == before  # a failure leaves the cursor alone
    error = evaluation.error or ""
    if kind == "return" and isinstance(value, str):
        assert "returned a cursor that cannot be stored exactly" in error, error
    elif kind == "return":
        assert f"returned a {type(value).__name__} cursor" in error
    else:
        line = f"RuntimeError: {value}" if value else "RuntimeError"
        assert error.endswith(escaped(line.rstrip()[-SUFFIX:])), error[-SUFFIX:]
    (latest,) = app.get_evaluations("fuzzed", limit=1)
    assert latest.error == evaluation.error


def check_set_cursor(app: fm.App, value: Any, by: str, before: str | None) -> None:
    if value is not None and (not isinstance(value, str) or json_joins(value)):
        with pytest.raises(fm.ConfigurationError, match="cursor"):
            app.set_cursor("fuzzed", value, by=by)
        assert app.get_sensor("fuzzed").cursor == before
        return
    evaluation = app.set_cursor("fuzzed", value, by=by)
    assert evaluation.cursor_before == before and evaluation.cursor_after == value
    assert app.get_sensor("fuzzed").cursor == value
    (latest,) = app.get_evaluations("fuzzed", limit=1)
    assert latest.evaluator == escaped(by or "api")  # who: free text, escaped
    assert latest.cursor_after == value
