"""Fuzzed run keys, payloads and job errors through ``app.submit`` and a worker.

Each generated request is either stored and read back exactly — the run's
key and payload as ``get_run`` returns them, and the payload the job
receives — or refused, before anything is written, with a ``FerrymanError``
whose message names the field. Jobs then fail with generated texts (an
exception's message, a ``Reject`` reason, which need not be a str): the
worker records each by the free-text rule (NUL and lone surrogates escaped)
and goes on, every run ending as it should. The rules are those of
``ferryman.store.records`` ("The text rules at the store boundary").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import ferryman as fm
from tests.properties.profiles import bounded
from tests.properties.texts import (
    REFUSED,
    Opaque,
    documents,
    escaped,
    expected_document,
    keys,
    nested,
    same_document,
    storable,
    texts,
)

# What is not a run_key at all: refused when the RunRequest is made.
NOT_KEYS = st.one_of(
    st.just(""), st.binary(max_size=4), st.integers(), st.none(), st.builds(Opaque)
)
# A Reject's reason is meant to be a str; users pass exceptions and bytes too.
REASONS = st.one_of(texts(), st.builds(ValueError, texts()), st.binary(max_size=4), st.none())
SUFFIX = 200  # characters of an error's end compared; a long traceback is cut in the middle


@dataclass(frozen=True)
class Failure:
    reason: Any  # the message of a RuntimeError, or a Reject's reason
    reject: bool


@dataclass(frozen=True)
class Stored:
    run_id: int
    run_key: str
    payload: Any  # as it must read back
    failure: Failure | None


failures = st.one_of(
    st.none(),
    st.builds(Failure, texts(), st.just(False)),
    st.builds(Failure, REASONS, st.just(True)),
)


def test_keys_payloads_and_job_errors_are_stored_exactly_or_refused_by_name(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    received: dict[str, Any] = {}
    failing: dict[str, Failure] = {}

    @app.job(max_attempts=1)
    def load(ctx: fm.JobContext, payload: Any) -> None:
        received[ctx.run_key] = payload
        failure = failing.get(ctx.run_key)
        if failure is not None and failure.reject:
            raise fm.Reject(failure.reason)
        if failure is not None:
            raise RuntimeError(failure.reason)

    stored: list[Stored] = []
    serial = itertools.count()

    @bounded(100)
    # Each of these once broke the rules; they run on every test run.
    @example(key="reason", payload=None, failure=Failure(ValueError("bad \udcff"), reject=True))
    @example(key="bytes", payload=None, failure=Failure(b"\xff", reject=True))
    @example(key="deep", payload=nested(990), failure=None)
    @example(key="int keys", payload={1: "one", "1": "the string one"}, failure=None)
    @example(key="", payload=None, failure=None)
    @given(key=st.one_of(*[keys()] * 3, NOT_KEYS), payload=documents, failure=failures)
    def submit_one(key: Any, payload: Any, failure: Failure | None) -> None:
        if not isinstance(key, str) or not key:
            with pytest.raises(fm.FerrymanError, match="run_key"):
                fm.RunRequest(key, payload)
            return
        run_key = f"{next(serial)}:{key}"  # one run per example, whatever hypothesis repeats
        request = fm.RunRequest(run_key, payload)
        verdict, readback = expected_document(payload)
        if not storable(key) and verdict == REFUSED:  # either may be named
            with pytest.raises(fm.PayloadError, match=r"(run_key|payload) of job 'load'"):
                app.submit("load", request)
        elif not storable(key):
            with pytest.raises(fm.PayloadError, match="run_key of job 'load'"):
                app.submit("load", request)
        elif verdict == REFUSED:
            with pytest.raises(fm.PayloadError, match="payload of job 'load' run_key"):
                app.submit("load", request)
        else:
            (run_id,) = app.submit("load", request).run_ids
            run = app.get_run(run_id)
            assert run is not None and run.run_key == run_key
            assert same_document(run.payload, readback)
            if failure is not None:
                failing[run_key] = failure
            stored.append(Stored(run_id, run_key, readback, failure))
            return
        # Refused before anything was written.
        assert run_key not in {run.run_key for run in app.get_runs(job="load")}

    submit_one()
    report = app.work(until_idle=True, concurrency=2, handle_signals=False)
    assert report.claimed == len(stored)
    for item in stored:
        assert same_document(received[item.run_key], item.payload)  # the job got it exactly
        run = app.get_run(item.run_id)
        assert run is not None
        check_ending(run, item.failure)


def check_ending(run: fm.Run, failure: Failure | None) -> None:
    """Succeeded; or failed with the reason, or dead with the error's end, escaped."""
    if failure is None:
        assert run.status is fm.RunStatus.SUCCEEDED and run.last_error is None
    elif failure.reject:
        reason = failure.reason if isinstance(failure.reason, str) else str(failure.reason)
        assert run.status is fm.RunStatus.FAILED
        assert run.last_error == escaped(reason)
    else:
        # The traceback ends with the exception's line, trailing blanks stripped.
        line = f"RuntimeError: {failure.reason}" if failure.reason else "RuntimeError"
        expected_end = escaped(line.rstrip()[-SUFFIX:])
        assert run.status is fm.RunStatus.DEAD
        assert (run.last_error or "").endswith(expected_end), (
            f"run {run.id}: the error does not end with {expected_end[-80:]!r}"
        )
